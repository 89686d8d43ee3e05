"""ingest: a privacy-first event-ingestion API."""

from __future__ import annotations

__version__ = "0.1.0"
