"""docs/api.md is what scripts/render_api_reference.py makes of the OpenAPI document today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ingest.openapi import document

ROOT = Path(__file__).resolve().parents[2]


def _renderer() -> Any:
    spec = importlib.util.spec_from_file_location(
        "render_api_reference", ROOT / "scripts" / "render_api_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_equals_a_fresh_render() -> None:
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    fresh = _renderer().render(document())
    assert committed == fresh, "docs/api.md is stale: run scripts/render_api_reference.py"


def test_reference_names_every_operation_and_error() -> None:
    page = _renderer().render(document())
    for path, item in document()["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in page
    for status in (400, 401, 403, 404, 405, 408, 413, 415, 429, 503):
        assert f"| {status} |" in page
