"""Tools for the GeoIP databases the ingest service reads."""

from __future__ import annotations
