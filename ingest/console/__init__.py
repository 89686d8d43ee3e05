"""The partner console at /console: server-rendered pages over the partner API (see pages.py)."""

from __future__ import annotations

from ingest.console.pages import Console

__all__ = ["Console"]
