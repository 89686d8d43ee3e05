"""ingest: a privacy-first event-ingestion API."""

from __future__ import annotations

__version__ = "0.1.0"


def native() -> bool:
    """Whether the parser's modules run compiled by mypyc (hatch_build.py lists them): each is
    then an extension module, not its .py file. The service logs it at start; the benchmark
    prints it beside its figures."""
    from ingest import events, pii

    return not any(str(m.__file__).endswith(".py") for m in (events, pii))
