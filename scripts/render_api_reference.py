"""Render docs/api.md from the OpenAPI document (ingest/openapi.py, served at GET /openapi.json).

Run ``.venv/bin/python scripts/render_api_reference.py`` after changing the document;
tests/api/test_api_reference.py fails while the committed page differs from a fresh render.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ingest.openapi import PROBLEMS, document

OUT = Path(__file__).resolve().parent.parent / "docs" / "api.md"
_SCHEME_TEXT = {
    "writeKeyBearer": "write key as `Authorization: Bearer iwk_…`",
    "writeKeyBasic": "write key as the HTTP Basic user (empty password)",
    "secretKeyBearer": "secret key as `Authorization: Bearer isk_…` (servers only)",
}


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        section, name = node["$ref"].split("/")[-2:]
        node = doc["components"][section][name]
    return node


def _type(doc: dict[str, Any], schema: Any) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "const" in schema:
        return f"`{schema['const']!r}`".replace("True", "true")
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"] if value is not None)
    kind = schema.get("type", "any")
    text = " \\| ".join(kind) if isinstance(kind, list) else str(kind)
    if "items" in schema:
        text += f" of {_type(doc, schema['items'])}"
    return text


def _fields(doc: dict[str, Any], schema: Any, heading: str) -> list[str]:
    """A table of an object schema's top-level fields (allOf parents and anyOf branches too)."""
    schema = _resolve(doc, schema)
    lines: list[str] = []
    for branch in schema.get("anyOf", []):
        name = branch["$ref"].rsplit("/", 1)[-1] if "$ref" in branch else _type(doc, branch)
        lines += _fields(doc, branch, f"{heading}, as {name}")
    properties: dict[str, Any] = {}
    required: set[str] = set(schema.get("required", []))
    for parent in schema.get("allOf", []):
        resolved = _resolve(doc, parent)
        properties.update(resolved.get("properties", {}))
        required |= set(resolved.get("required", []))
    properties.update(schema.get("properties", {}))
    if not properties:
        if not lines and schema.get("type") not in (None, "object"):
            lines += [f"{heading}: {_type(doc, schema)}.", ""]
        return lines
    lines += [f"{heading}:", "", "| field | type | required | meaning |", "|---|---|---|---|"]
    for name, prop in properties.items():
        meaning = str(_resolve(doc, prop).get("description", "")).replace("|", "\\|")
        is_required = "yes" if name in required else ""
        lines.append(f"| `{name}` | {_type(doc, prop)} | {is_required} | {meaning} |")
    return [*lines, ""]


def _security(op: dict[str, Any]) -> str:
    options = op["security"]
    if not options:
        return "none"
    texts = [
        " and ".join(_SCHEME_TEXT[name] for name in option) if option else "none in a header"
        for option in options
    ]
    return "; or ".join(texts)


def _operation(doc: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", "", f"**{op['summary']}.** {op['description']}", ""]
    lines += [f"**Auth:** {_security(op)}.", ""]
    if op.get("parameters"):
        lines += ["| parameter | in | required | meaning |", "|---|---|---|---|"]
        for parameter in op["parameters"]:
            is_required = "yes" if parameter.get("required") else ""
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {is_required} | "
                f"{parameter.get('description', _type(doc, parameter['schema']))} |"
            )
        lines.append("")
    body = op.get("requestBody")
    if body is not None:
        media = ", ".join(f"`{m}`" for m in body["content"])
        optional = "" if body.get("required") else " (optional)"
        lines += [f"**Request body**{optional}: {media}.", ""]
        lines += _fields(doc, body["content"]["application/json"]["schema"], "Fields")
    lines += ["| status | body | meaning |", "|---|---|---|"]
    for status, response in op["responses"].items():
        resolved = _resolve(doc, response)
        content = resolved.get("content", {})
        kinds = ", ".join(
            f"`{media}` {_type(doc, spec['schema'])}" for media, spec in content.items()
        )
        headers = resolved.get("headers")
        if headers:
            kinds += " (headers: " + ", ".join(f"`{h}`" for h in headers) + ")"
        lines.append(f"| {status} | {kinds} | {resolved['description']} |")
    lines.append("")
    for sample in op.get("x-codeSamples", []):
        lines += ["```sh", sample["source"], "```", ""]
    return lines


def render(doc: dict[str, Any]) -> str:
    """The whole page, deterministic for a given document."""
    info = doc["info"]
    lines = [
        f"# {info['title']} API reference ({info['version']})",
        "",
        "<!-- Generated by scripts/render_api_reference.py from GET /openapi.json"
        " (ingest/openapi.py). Do not edit by hand. -->",
        "",
        f"{info['summary']} {info['description']}",
        "",
        "## Authentication",
        "",
    ]
    for name, scheme in doc["components"]["securitySchemes"].items():
        lines.append(f"- `{name}` (HTTP {scheme['scheme']}): {scheme['description']}")
    lines += ["", "## Routes", "", "| method | path | summary | auth |", "|---|---|---|---|"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            lines.append(f"| {method.upper()} | `{path}` | {op['summary']} | {_security(op)} |")
    lines.append("")
    for tag in doc["tags"]:
        lines += [f"## {tag['name']}", "", tag["description"], ""]
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if tag["name"] in op["tags"]:
                    lines += _operation(doc, path, method, op)
    lines += ["## Errors", "", "Every error is `application/problem+json`:", ""]
    lines += _fields(doc, {"$ref": "#/components/schemas/Problem"}, "Problem fields")
    lines += ["| status | name | `type` and when |", "|---|---|---|"]
    for name, response in doc["components"]["responses"].items():
        status = PROBLEMS[name][0]
        headers = response.get("headers")
        extra = (" Headers: " + ", ".join(f"`{h}`" for h in headers) + ".") if headers else ""
        lines.append(f"| {status} | {name} | {response['description']}{extra} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render(document()), encoding="utf-8")
    sys.stderr.write(f"wrote {OUT}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
