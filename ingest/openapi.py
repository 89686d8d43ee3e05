"""The OpenAPI 3.1 document for every route the app serves, built once as a dict.

tests/api/test_openapi.py fails when a route and this document disagree; docs/api.md is
rendered from it by scripts/render_api_reference.py.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest import __version__, posthog, segment
from ingest.problems import PROBLEM_BASE

JSON: Final = "application/json"
PROBLEM: Final = "application/problem+json"

# Security requirements, alternatives in order of preference.
Security = list[dict[str, list[str]]]
WRITE_KEY: Final[Security] = [{"writeKeyBearer": []}, {"writeKeyBasic": []}]
SECRET_KEY: Final[Security] = [{"secretKeyBearer": []}]
ANY_KEY: Final = [*WRITE_KEY, *SECRET_KEY]
# The Segment routes also take the key as "writeKey" in the body, which OpenAPI cannot name as a
# security scheme: the empty requirement says "no header needed", the description says why.
SEGMENT_KEY: Final = [*WRITE_KEY, {}]
NO_KEY: Final[Security] = []

# The routes are read from their own modules, so the document cannot disagree with them.
SEGMENT_SINGLE: Final = segment.SINGLE_ROUTES
SEGMENT_BATCH: Final = segment.BATCH_PATHS
POSTHOG_PATHS: Final = posthog.PATHS

# Problem slug, status and when it happens: the error table of the README.
PROBLEMS: Final = {
    "BadRequest": (
        400,
        "invalid-json, invalid-body or validation: malformed JSON or gzip, a body of the wrong "
        "shape, or an invalid single event (`errors` lists index, field and reason).",
    ),
    "Unauthorized": (
        401,
        "invalid-key: a missing, malformed, unknown or revoked key (all answered alike).",
    ),
    "Forbidden": (
        403,
        "forbidden: the wrong kind of key for this route, a secret key from a browser (an "
        "`Origin` or cross-site `Sec-Fetch-Site` header), an origin not on the project's "
        "allow-list, or a secret key without `X-Ingest-Project-Id`.",
    ),
    "NotFound": (404, "not-found: no such project (another organization's project included)."),
    "MethodNotAllowed": (
        405,
        "about:blank: the path exists but not with this method (the `Allow` header lists the "
        "methods it has).",
    ),
    "RequestTimeout": (
        408,
        "request-timeout: the body did not arrive within `INGEST_BODY_TIMEOUT_SECONDS`.",
    ),
    "PayloadTooLarge": (
        413,
        "payload-too-large: the body, the decoded gzip body, the batch or one event is over its "
        "limit (`limit`, and `size` when known).",
    ),
    "UnsupportedMediaType": (
        415,
        "unsupported-media-type: a content type other than JSON or text (or a `data=` form on "
        "the PostHog routes), an encoding other than gzip, or chained encodings.",
    ),
    "TooManyRequests": (
        429,
        "rate-limited: the key is over `INGEST_RATE_LIMIT_PER_KEY`; retry after `Retry-After` "
        "seconds with the same message ids.",
    ),
    "Unavailable": (
        503,
        "unavailable: the database is down or slow, or the write queue is full; retry after "
        "`Retry-After` seconds with the same message ids (nothing answered 200 is ever lost).",
    ),
}
_STATUS_REF: Final = {status: name for name, (status, _) in PROBLEMS.items()}

# Which problems each kind of route can answer with (405 comes from the router, see PROBLEMS).
EVENT_ERRORS: Final = (400, 401, 403, 404, 408, 413, 415, 429, 503)
SDK_ERRORS: Final = (400, 401, 403, 408, 413, 415, 429, 503)
PARTNER_ERRORS: Final = (400, 401, 403, 408, 413, 415, 503)
PARTNER_PROJECT_ERRORS: Final = (*PARTNER_ERRORS, 404)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(ok: int, schema: dict[str, Any], description: str, errors: tuple[int, ...]) -> Any:
    out: dict[str, Any] = {
        str(ok): {"description": description, "content": {JSON: {"schema": schema}}}
    }
    for status in sorted(errors):
        out[str(status)] = {"$ref": f"#/components/responses/{_STATUS_REF[status]}"}
    return out


def _json_body(schema: dict[str, Any], *, required: bool = True, text: bool = True) -> Any:
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if text:
        # navigator.sendBeacon and the browser SDKs send JSON as text/plain to skip preflight.
        content["text/plain"] = {"schema": {"type": "string", "description": "JSON text"}}
    return {"required": required, "content": content}


def _curl(method: str, path: str, auth: str, body: str | None) -> str:
    parts = [f"curl -s -X {method} https://ingest.example.com{path}"]
    if auth:
        parts.append(auth)
    if body is not None:
        parts.append("-H 'Content-Type: application/json'")
        parts.append(f"-d '{body}'")
    return " \\\n  ".join(parts)


def _operation(
    summary: str,
    description: str,
    tag: str,
    security: Security,
    responses: Any,
    curl: str,
    request_body: Any = None,
    parameters: list[Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "description": description,
        "tags": [tag],
        "security": security,
    }
    if parameters:
        op["parameters"] = parameters
    if request_body is not None:
        op["requestBody"] = request_body
    op["responses"] = responses
    op["x-codeSamples"] = [{"lang": "curl", "source": curl}]
    return op


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    obj = {"type": "object", "additionalProperties": True}
    event_props: dict[str, Any] = {
        "type": {
            "type": "string",
            "enum": ["track", "identify", "page", "screen", "group", "alias"],
            "default": "track",
        },
        "event": {"type": "string", "description": "The event name (required for track)."},
        "name": {"type": "string", "description": "The page or screen name."},
        "user_id": {
            "type": ["string", "number"],
            "description": "At least one of user_id and anonymous_id (numbers stored as strings).",
        },
        "anonymous_id": {"type": ["string", "number"]},
        "message_id": {
            "type": "string",
            "maxLength": 100,
            "description": "Makes retries safe: stored once per project within the dedup window.",
        },
        "timestamp": {"type": "string", "description": "ISO 8601 (no offset means UTC)."},
        "sent_at": {"type": "string", "description": "ISO 8601; corrects clock skew."},
        "app_id": {"type": "string"},
        "properties": obj,
        "traits": obj,
        "context": {
            **obj,
            "description": "`context.ip` is believed only from server-side keys, then dropped.",
        },
        "group_id": {"type": "string", "description": "For group; kept in properties."},
        "previous_id": {"type": "string", "description": "For alias; kept in properties."},
    }
    issue = {
        "type": "object",
        "required": ["index", "code", "field", "reason"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "code": {"type": "string", "examples": ["invalid_timestamp", "phone_unmatchable"]},
            "field": nullable_string,
            "reason": {"type": "string"},
            "size": {"type": "integer"},
        },
    }
    tally_props = {
        "accepted": {"type": "integer", "minimum": 0},
        "duplicates": {"type": "integer", "minimum": 0},
        "rejected": {"type": "array", "items": _ref("Issue")},
        "warnings": {"type": "array", "items": _ref("Issue")},
    }
    tally_required = ["accepted", "duplicates", "rejected", "warnings"]
    issued_key_props = {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": ["write", "secret"]},
        "key": {"type": "string", "description": "The key itself: shown once, never again."},
        "prefix": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
    }
    project_props = {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "default_country": nullable_string,
        "allowed_origins": {"type": ["array", "null"], "items": {"type": "string"}},
        "events_retention_days": {"type": "integer"},
        "dedup_window_days": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
    }
    project_fields = {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "default_country": {
            "type": ["string", "null"],
            "pattern": "^[A-Za-z]{2}$",
            "description": "ISO 3166 alpha-2; national phone numbers are read in this country.",
        },
        "allowed_origins": {
            "type": ["array", "null"],
            "maxItems": 100,
            "items": {"type": "string", "examples": ["https://shop.example.com"]},
            "description": "Origins whose pages may use the write keys; null accepts any.",
        },
        "events_retention_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3650,
            "default": 395,
            "description": "Days its events are kept, counted in whole UTC days (default 13 "
            "months); the purge deletes older ones within the hour.",
        },
        "dedup_window_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3650,
            "default": 7,
            "description": "Days a message_id is remembered: a retry within it is stored once.",
        },
    }
    segment_props = {
        "type": event_props["type"],
        "event": event_props["event"],
        "name": event_props["name"],
        "userId": event_props["user_id"],
        "anonymousId": event_props["anonymous_id"],
        "messageId": event_props["message_id"],
        "timestamp": event_props["timestamp"],
        "sentAt": event_props["sent_at"],
        "category": {"type": "string", "description": "A page's category (properties.category)."},
        "properties": obj,
        "traits": obj,
        "context": obj,
        "groupId": {"type": "string"},
        "previousId": {"type": "string"},
        "integrations": {**obj, "description": "Not stored (Segment's destinations)."},
        "writeKey": {
            "type": "string",
            "description": "The write key, when it is not the HTTP Basic user. Not stored.",
        },
    }
    posthog_event_props = {
        "event": {"type": "string", "examples": ["$pageview", "$identify", "Signed Up"]},
        "distinct_id": {"type": ["string", "number"]},
        "uuid": {"type": "string", "description": "The message id."},
        "timestamp": {"type": "string"},
        "properties": {
            **obj,
            "description": "`token` (the key), `$set`, `$set_once`, `$ip`, `$lib`, ...",
        },
        "$set": obj,
        "$set_once": obj,
        "api_key": {"type": "string"},
        "token": {"type": "string"},
    }
    return {
        "Event": {
            "type": "object",
            "description": "One native event; camelCase spellings (userId, messageId, ...) are "
            "accepted too. Other top-level fields are ignored.",
            "properties": event_props,
            "additionalProperties": True,
        },
        "Batch": {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": _ref("Event")},
                "sent_at": event_props["sent_at"],
            },
        },
        "EventsBody": {
            "anyOf": [_ref("Event"), _ref("Batch"), {"type": "array", "items": _ref("Event")}],
        },
        "Issue": issue,
        "EventResults": {
            "type": "object",
            "required": tally_required,
            "properties": tally_props,
        },
        "SegmentMessage": {
            "type": "object",
            "description": "One Segment Tracking API call; the route implies its type.",
            "properties": segment_props,
            "additionalProperties": True,
        },
        "SegmentBatch": {
            "type": "object",
            "required": ["batch"],
            "properties": {
                "batch": {"type": "array", "items": _ref("SegmentMessage")},
                "sentAt": event_props["sent_at"],
                "context": {**obj, "description": "Applied to each message (its own keys win)."},
                "writeKey": segment_props["writeKey"],
            },
            "additionalProperties": True,
        },
        "SegmentResults": {
            "type": "object",
            "required": ["success", *tally_required],
            "properties": {"success": {"const": True}, **tally_props},
        },
        "SegmentSettings": {
            "type": "object",
            "required": ["integrations"],
            "properties": {
                "integrations": {
                    "type": "object",
                    "required": ["Segment.io"],
                    "properties": {
                        "Segment.io": {
                            "type": "object",
                            "required": ["apiKey", "apiHost", "protocol"],
                            "properties": {
                                "apiKey": {"type": "string"},
                                "apiHost": {
                                    "type": "string",
                                    "examples": ["ingest.example.com/v1"],
                                },
                                "protocol": {"type": "string", "enum": ["http", "https"]},
                            },
                        }
                    },
                },
                "metrics": {"type": "object", "properties": {"sampleRate": {"const": 0}}},
            },
            "additionalProperties": True,
        },
        "PostHogEvent": {
            "type": "object",
            "properties": posthog_event_props,
            "additionalProperties": True,
        },
        "PostHogBody": {
            "anyOf": [
                _ref("PostHogEvent"),
                {"type": "array", "items": _ref("PostHogEvent")},
                {
                    "type": "object",
                    "required": ["batch"],
                    "properties": {
                        "api_key": {"type": "string"},
                        "batch": {"type": "array", "items": _ref("PostHogEvent")},
                        "sent_at": {"type": "string"},
                    },
                },
            ],
        },
        "PostHogResults": {
            "type": "object",
            "required": ["status", *tally_required],
            "properties": {"status": {"const": 1}, **tally_props},
        },
        "ProjectCreate": {
            "type": "object",
            "required": ["name"],
            "properties": project_fields,
            "additionalProperties": True,
        },
        "ProjectPatch": {
            "type": "object",
            "description": "Absent fields are unchanged; null clears (not a retention).",
            "properties": project_fields,
            "additionalProperties": True,
        },
        "KeyCreate": {
            "type": "object",
            "properties": {
                "server_side": {
                    "type": "boolean",
                    "default": False,
                    "description": "A server-side key's context.ip is trusted.",
                }
            },
            "additionalProperties": True,
        },
        "IssuedKey": {
            "type": "object",
            "required": list(issued_key_props),
            "properties": issued_key_props,
        },
        "Project": {
            "type": "object",
            "required": list(project_props),
            "properties": project_props,
        },
        "ProjectCreated": {
            "allOf": [_ref("Project")],
            "type": "object",
            "required": ["write_key"],
            "properties": {"write_key": _ref("IssuedKey")},
        },
        "KeyCreated": {
            "allOf": [_ref("IssuedKey")],
            "type": "object",
            "required": ["project_id", "server_side"],
            "properties": {
                "project_id": {"type": "string", "format": "uuid"},
                "server_side": {"type": "boolean"},
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}},
        },
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details. `detail` names fields, limits and sizes, "
            "never the values sent.",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {
                    "type": "string",
                    "examples": [PROBLEM_BASE + "invalid-json", "about:blank"],
                },
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": ["string", "null"]},
                "instance": {"type": "string", "description": "The request id (X-Request-Id)."},
                "errors": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "For validation: index, field and reason of each error.",
                },
                "limit": {"type": "number"},
                "size": {"type": "integer"},
                "retry_after": {"type": "integer"},
                "field": {"type": "string"},
                "accepted": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": True,
        },
    }


def _components() -> dict[str, Any]:
    retry_after = {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
    responses: dict[str, Any] = {}
    for name, (status, description) in PROBLEMS.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM: {"schema": _ref("Problem")}},
        }
        if status == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 429:
            response["headers"] = {"Retry-After": retry_after, "X-RateLimit-Reset": retry_after}
        if status == 503:
            response["headers"] = {"Retry-After": retry_after}
        responses[name] = response
    return {
        "securitySchemes": {
            "writeKeyBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A project write key (`iwk_...`): `Authorization: Bearer iwk_...`.",
            },
            "writeKeyBasic": {
                "type": "http",
                "scheme": "basic",
                "description": "A project write key as the HTTP Basic user, empty password (what "
                "Segment's SDKs send).",
            },
            "secretKeyBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An organization secret key (`isk_...`), from servers only: "
                "refused with 403 when the request carries `Origin` or a cross-site "
                "`Sec-Fetch-Site`.",
            },
        },
        "schemas": _schemas(),
        "responses": responses,
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    event = '{"type":"track","user_id":"u-42","event":"Signed Up","message_id":"m-1"}'
    paths["/v1/events"] = {
        "post": _operation(
            "Send one event or a batch",
            'One event, `{"batch": [...], "sent_at"?}` or a JSON array of events; '
            "`Content-Encoding: gzip` is accepted. 200 only after the accepted events are "
            "committed; in a batch each bad event is reported by index and the rest stored. A "
            "single invalid event gets 400 (413 if too large). A secret key may post for one of "
            "its organization's projects, named in `X-Ingest-Project-Id`.",
            "Events",
            ANY_KEY,
            _responses(200, _ref("EventResults"), "Per-event results.", EVENT_ERRORS),
            _curl("POST", "/v1/events", '-H "Authorization: Bearer $WRITE_KEY"', event),
            _json_body(_ref("EventsBody")),
            [
                {
                    "name": "X-Ingest-Project-Id",
                    "in": "header",
                    "required": False,
                    "description": "With a secret key only: the project the events go to.",
                    "schema": {"type": "string", "format": "uuid"},
                }
            ],
        )
    }
    segment_auth = (
        "The write key is the HTTP Basic user (empty password), a Bearer token, or `writeKey` "
        "in the body. A secret key is refused (403)."
    )
    for name, kind in SEGMENT_SINGLE.items():
        short = len(name) == 1
        paths[f"/v1/{name}"] = {
            "post": _operation(
                f"Segment {kind}" + (" (analytics.js short path)" if short else ""),
                f"Segment's Tracking API `{kind}` call, mapped onto a native `{kind}` event "
                f"(the route's type wins over one in the body). {segment_auth}",
                "Segment",
                SEGMENT_KEY,
                _responses(200, _ref("SegmentResults"), "Stored.", SDK_ERRORS),
                _curl(
                    "POST",
                    f"/v1/{name}",
                    '-u "$WRITE_KEY:"',
                    '{"userId":"u-1","event":"Signed Up","properties":{"plan":"pro"}}'
                    if kind == "track"
                    else '{"userId":"u-1"}',
                ),
                _json_body(_ref("SegmentMessage")),
            )
        }
    for path in SEGMENT_BATCH:
        paths[path] = {
            "post": _operation(
                "Segment batch" + (" (short path)" if path.endswith("/b") else ""),
                "A batch of Segment calls, each with its `type`; a batch-level `context` is "
                f"applied to each message. Mobile SDKs send gzip, chunked, text/plain. "
                f"{segment_auth}",
                "Segment",
                SEGMENT_KEY,
                _responses(200, _ref("SegmentResults"), "Per-message results.", SDK_ERRORS),
                _curl(
                    "POST",
                    path,
                    '-u "$WRITE_KEY:"',
                    '{"batch":[{"type":"identify","userId":"u-1","traits":{"plan":"pro"}}]}',
                ),
                _json_body(_ref("SegmentBatch")),
            )
        }
    paths["/v1/projects/{write_key}/settings"] = {
        "get": _operation(
            "Segment SDK settings",
            "What analytics.js (from its `cdnURL`) and analytics-kotlin/swift fetch at start: "
            '`integrations["Segment.io"]` with `apiKey`, `apiHost` and `protocol` '
            "(`INGEST_PUBLIC_URL`, else the request's Host). The write key is in the path.",
            "Segment",
            NO_KEY,
            _responses(
                200,
                _ref("SegmentSettings"),
                "The settings (Cache-Control: no-store).",
                (400, 401, 403, 503),
            ),
            _curl("GET", "/v1/projects/$WRITE_KEY/settings", "", None),
            parameters=[
                {
                    "name": "write_key",
                    "in": "path",
                    "required": True,
                    "description": "A project write key (`iwk_...`).",
                    "schema": {"type": "string", "pattern": "^[^/]+$"},
                }
            ],
        )
    }
    posthog_body = {
        "required": True,
        "content": {
            JSON: {"schema": _ref("PostHogBody")},
            "text/plain": {"schema": {"type": "string", "description": "JSON, gzip or base64"}},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "string", "description": "base64 of the JSON body"},
                        "compression": {"type": "string", "enum": ["base64", "gzip-js"]},
                    },
                }
            },
        },
    }
    compression = {
        "name": "compression",
        "in": "query",
        "required": False,
        "description": "`gzip-js` (the body is gzip) or `base64`; `lz64` is refused with 415.",
        "schema": {"type": "string", "enum": ["gzip-js", "base64", "lz64"]},
    }
    sent = {
        "name": "_",
        "in": "query",
        "required": False,
        "description": "posthog-js's send time, epoch milliseconds.",
        "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
    }
    for base in POSTHOG_PATHS:
        for path in (base, f"{base}/"):
            paths[path] = {
                "post": _operation(
                    f"PostHog capture ({path})",
                    "PostHog's capture API as the SDKs send it: one event, a list, or "
                    '`{"api_key", "batch": [...], "sent_at"?}`. The write key is `api_key` or '
                    "`token` beside the batch or in each event (`properties.token`); all must "
                    "agree. No Authorization header is read. Bodies are JSON, gzip "
                    "(`Content-Encoding` or `?compression=gzip-js`), or base64 in a `data=` "
                    "form field.",
                    "PostHog",
                    NO_KEY,
                    _responses(200, _ref("PostHogResults"), "Stored.", SDK_ERRORS),
                    _curl(
                        "POST",
                        path,
                        "",
                        '{"api_key":"\'$WRITE_KEY\'","event":"Signed Up","distinct_id":"u-1"}',
                    ),
                    posthog_body,
                    [compression, sent],
                )
            }
    project_id = {
        "name": "project_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    secret = '-H "Authorization: Bearer $SECRET_KEY"'  # noqa: S105  # a shell variable's name
    paths["/v1/projects"] = {
        "post": _operation(
            "Create a project",
            "A new project of the key's organization, with its first write key.",
            "Projects",
            SECRET_KEY,
            _responses(
                201, _ref("ProjectCreated"), "The project and its write key.", (PARTNER_ERRORS)
            ),
            _curl("POST", "/v1/projects", secret, '{"name":"iOS app","default_country":"US"}'),
            _json_body(_ref("ProjectCreate")),
        )
    }
    paths["/v1/projects/{project_id}"] = {
        "patch": _operation(
            "Change a project",
            "Change its name, default country, origin allow-list or retention; absent fields "
            "are unchanged, null clears (not the retention days, which cannot be null). Another "
            "organization's project answers 404.",
            "Projects",
            SECRET_KEY,
            _responses(200, _ref("Project"), "The project.", PARTNER_PROJECT_ERRORS),
            _curl(
                "PATCH",
                "/v1/projects/$PROJECT_ID",
                secret,
                '{"allowed_origins":["https://shop.example.com"]}',
            ),
            _json_body(_ref("ProjectPatch")),
            [project_id],
        )
    }
    paths["/v1/projects/{project_id}/keys"] = {
        "post": _operation(
            "Issue a write key",
            "Another write key for the project. The body may be empty.",
            "Projects",
            SECRET_KEY,
            _responses(201, _ref("KeyCreated"), "The key (shown once).", PARTNER_PROJECT_ERRORS),
            _curl("POST", "/v1/projects/$PROJECT_ID/keys", secret, '{"server_side":true}'),
            _json_body(_ref("KeyCreate"), required=False),
            [project_id],
        )
    }
    status_ok = {"200": {"description": "OK.", "content": {JSON: {"schema": _ref("Status")}}}}
    paths["/healthz"] = {
        "get": _operation(
            "Liveness",
            "200 while the process runs.",
            "Operations",
            NO_KEY,
            status_ok,
            _curl("GET", "/healthz", "", None),
        )
    }
    paths["/readyz"] = {
        "get": _operation(
            "Readiness",
            "200 when the database answers, else 503.",
            "Operations",
            NO_KEY,
            {**status_ok, "503": {"$ref": "#/components/responses/Unavailable"}},
            _curl("GET", "/readyz", "", None),
        )
    }
    paths["/metrics"] = {
        "get": _operation(
            "Prometheus metrics",
            "Prometheus text format. Bind it to an internal network.",
            "Operations",
            NO_KEY,
            {
                "200": {
                    "description": "Metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            _curl("GET", "/metrics", "", None),
        )
    }
    paths["/openapi.json"] = {
        "get": _operation(
            "This document",
            "The OpenAPI 3.1 document describing every route.",
            "Operations",
            NO_KEY,
            {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
            _curl("GET", "/openapi.json", "", None),
        )
    }
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The whole document (built once; callers must not mutate it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ingest",
            "version": __version__,
            "summary": "Privacy-first event ingestion: events in, PII hashed, IP dropped.",
            "description": "Every error is `application/problem+json` (RFC 9457) with `type`, "
            "`title`, `status`, `detail` and `instance` (the request id, also in "
            "`X-Request-Id`). A path called with a method it does not have answers 405 "
            "(`about:blank`). A 500 is always a bug.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "Events", "description": "The native write API."},
            {"name": "Segment", "description": "Segment's Tracking API, for the Segment SDKs."},
            {"name": "PostHog", "description": "PostHog's capture API, for the PostHog SDKs."},
            {"name": "Projects", "description": "Partner routes, with an organization secret key."},
            {"name": "Operations", "description": "Health, readiness, metrics, this document."},
        ],
        "paths": _paths(),
        "components": _components(),
    }


@functools.cache
def document_bytes() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: Request) -> Response:
    """``GET /openapi.json``: the document of every route."""
    return Response(document_bytes(), media_type="application/json")


ROUTES: Final = [Route("/openapi.json", openapi_json, methods=["GET"])]
