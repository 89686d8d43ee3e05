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

from ingest import __version__, posthog, rudderstack, segment
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
        "shape, an invalid single event (`errors` lists index, field and reason), or a bad "
        "`Idempotency-Key`, `limit` or `cursor` (`field` names it).",
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
    "NotFound": (
        404,
        "not-found: no such project, key, user or erasure (another organization's answers "
        "exactly like a missing one).",
    ),
    "MethodNotAllowed": (
        405,
        "about:blank: the path exists but not with this method (the `Allow` header lists the "
        "methods it has).",
    ),
    "RequestTimeout": (
        408,
        "request-timeout: the body did not arrive within `INGEST_BODY_TIMEOUT_SECONDS`.",
    ),
    "Conflict": (
        409,
        "conflict: the organization's last working secret key cannot be revoked. "
        "idempotency-in-flight: the first request with this `Idempotency-Key` is still running "
        "(retry after `Retry-After`). key-already-issued: the first request with this key "
        "issued a key, whose secret is shown once; `created` is that answer with `key` null.",
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
    "UnprocessableContent": (
        422,
        "idempotency-key-reused: this `Idempotency-Key` was sent within 24 h with another "
        "method, path or body; use a new key for a new request.",
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

# What the audit log records (ingest/manage.py, ingest/subjects.py).
AUDIT_ACTIONS: Final = (
    "project.create",
    "project.update",
    "project.delete",
    "project.crypto_shred",
    "key.create",
    "key.revoke",
    "key.rotate",
    "subject.export",
    "subject.erase",
    "destination.create",
    "destination.update",
    "destination.delete",
    "destination.rotate_secret",
    "destination.retry_dead_letters",
)

# Which problems each kind of route can answer with (405 comes from the router, see PROBLEMS).
EVENT_ERRORS: Final = (400, 401, 403, 404, 408, 413, 415, 429, 503)
SDK_ERRORS: Final = (400, 401, 403, 408, 413, 415, 429, 503)
# Partner routes (secret key). A read answers 401, 403, 429 or 503 (404 for a missing project,
# key, user or erasure; 400 for a bad limit or cursor). A write adds what Idempotency-Key brings
# (400 for a bad key, 409, 422, and 408/413 since the body is read to fingerprint it), and a
# write with a JSON body adds 415.
PARTNER_READ_ERRORS: Final = (401, 403, 429, 503)
PARTNER_WRITE_ERRORS: Final = (400, 401, 403, 408, 409, 413, 422, 429, 503)
PARTNER_BODY_ERRORS: Final = (*PARTNER_WRITE_ERRORS, 415)
NDJSON: Final = "application/x-ndjson"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(ok: int, schema: dict[str, Any], description: str, errors: tuple[int, ...]) -> Any:
    out: dict[str, Any] = {
        str(ok): {"description": description, "content": {JSON: {"schema": schema}}}
    }
    for status in sorted(errors):
        out[str(status)] = {"$ref": f"#/components/responses/{_STATUS_REF[status]}"}
    return out


def _no_content() -> Any:
    """A partner DELETE that answers 204 with no body."""
    out: dict[str, Any] = {"204": {"description": "Deleted."}}
    for status in sorted((*PARTNER_WRITE_ERRORS, 404)):
        out[str(status)] = {"$ref": f"#/components/responses/{_STATUS_REF[status]}"}
    return _replayable(out)


def _replayable(responses: Any) -> Any:
    """Mark the success answer of a partner write as one an Idempotency-Key may replay."""
    for status, response in responses.items():
        if status.startswith("2"):
            response["headers"] = {
                "Idempotent-Replayed": {
                    "description": "`true` when this is the stored answer to an earlier request "
                    "with the same `Idempotency-Key`.",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
    return responses


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
        "forward_queue_days": {"type": "integer"},
        "dead_letter_days": {"type": "integer"},
        "identifier_pii": {"type": "string", "enum": ["reject", "hash"]},
        "digest_storage": {"type": "string", "enum": ["protected", "plain"]},
        "shredded_at": {"type": ["string", "null"], "format": "date-time"},
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
        "forward_queue_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 30,
            "default": 1,
            "description": "Days an event may wait for a destination before it goes to the "
            "dead letters and loses its device ids (a paused destination's too).",
        },
        "dead_letter_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": 3650,
            "default": 7,
            "description": "Days dead letters are kept for a retry.",
        },
        "identifier_pii": {
            "type": "string",
            "enum": ["reject", "hash"],
            "default": "reject",
            "description": "A user_id, anonymous_id, group_id or previous_id that is an email "
            "address or a phone number: refuse the event (reject), or store the SHA-256 of "
            "the normalized value in its place (hash).",
        },
        "digest_storage": {
            "type": "string",
            "enum": ["protected", "plain"],
            "default": "protected",
            "description": "How email and phone SHA-256 digests are stored: sealed under the "
            "project's key, which a stolen dump cannot reverse (protected), or as plain "
            "SHA-256 (plain). Exports and forwards carry the plain SHA-256 either way.",
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
    uuid_ = {"type": "string", "format": "uuid"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    key_info_props = {
        "id": uuid_,
        "kind": issued_key_props["kind"],
        "prefix": issued_key_props["prefix"],
        "status": {
            "type": "string",
            "enum": ["active", "expiring", "revoked"],
            "description": "expiring: rotated, still accepted until `expires_at`.",
        },
        "created_at": issued_key_props["created_at"],
        "revoked_at": nullable_time,
        "expires_at": nullable_time,
        "replaced_by": {
            "type": ["string", "null"],
            "format": "uuid",
            "description": "The key that rotation issued in its place.",
        },
        "project_id": {**uuid_, "description": "Write keys only."},
        "server_side": {"type": "boolean", "description": "Write keys only."},
    }
    count = {"type": "integer", "minimum": 0}
    subject_value = {"type": "string", "minLength": 1, "maxLength": 255}
    sha256_hex = {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"}
    exported_props = {
        "message_id": {"type": "string"},
        "type": event_props["type"],
        "event": nullable_string,
        "user_id": nullable_string,
        "anonymous_id": nullable_string,
        "timestamp": {"type": "string", "format": "date-time"},
        "original_timestamp": nullable_time,
        "sent_at": nullable_time,
        "received_at": {"type": "string", "format": "date-time"},
        "app_id": nullable_string,
        "country": nullable_string,
        "region": nullable_string,
        "email_sha256": nullable_string,
        "email_google_sha256": nullable_string,
        "phone_sha256": nullable_string,
        "phone_e164_sha256": nullable_string,
        "properties": obj,
        "traits": obj,
        "context": obj,
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
        "RudderStackSourceConfig": {
            "type": "object",
            "required": ["source"],
            "properties": {
                "isHosted": {"const": False},
                "source": {
                    "type": "object",
                    "required": ["id", "enabled", "config", "destinations"],
                    "properties": {
                        "id": {"type": "string", "description": "The project id."},
                        "name": {"type": "string"},
                        "workspaceId": {"type": "string"},
                        "writeKey": {"type": "string"},
                        "enabled": {"const": True},
                        "config": {"type": "object"},
                        "destinations": {"type": "array", "maxItems": 0},
                    },
                },
            },
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
        "ProjectList": {
            "type": "object",
            "required": ["projects"],
            "properties": {"projects": {"type": "array", "items": _ref("Project")}},
        },
        "ProjectShredded": {
            "type": "object",
            "required": ["id", "shredded_at"],
            "properties": {
                "id": uuid_,
                "shredded_at": {"type": "string", "format": "date-time"},
            },
        },
        "ProjectDeleted": {
            "type": "object",
            "required": ["id", "deleted", "completed_at"],
            "properties": {
                "id": uuid_,
                "deleted": {
                    "type": "object",
                    "description": "Rows deleted, per data class: events, message_ids, "
                    "user_profiles, suppressions, erasures, destinations, outbox, deliveries.",
                    "additionalProperties": count,
                },
                "completed_at": {"type": "string", "format": "date-time"},
            },
        },
        "SecretKeyCreate": {
            "type": "object",
            "description": "Empty, or `{}`: a secret key has no options (`server_side` is a 400).",
            "not": {"required": ["server_side"]},
            "additionalProperties": True,
        },
        "KeyRotate": {
            "type": "object",
            "properties": {
                "grace_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 2592000,
                    "default": 0,
                    "description": "How long the old key keeps working (30 days at most); 0 "
                    "refuses it at once.",
                }
            },
            "additionalProperties": True,
        },
        "KeyInfo": {
            "type": "object",
            "description": "A key as lists show it: never the key itself.",
            "required": [
                name for name in key_info_props if name not in ("project_id", "server_side")
            ],
            "properties": key_info_props,
        },
        "KeyList": {
            "type": "object",
            "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": _ref("KeyInfo")}},
        },
        "KeyRotated": {
            "allOf": [_ref("IssuedKey")],
            "type": "object",
            "required": ["replaces"],
            "properties": {
                "replaces": {
                    **_ref("KeyInfo"),
                    "description": "The old key: `expiring` (or `revoked` with no grace), "
                    "`replaced_by` the new one.",
                },
                "project_id": {**uuid_, "description": "Write keys only."},
                "server_side": {"type": "boolean", "description": "Write keys only."},
            },
        },
        "AuditEntry": {
            "type": "object",
            "required": [
                "id",
                "occurred_at",
                "key_id",
                "request_id",
                "action",
                "target",
                "project_id",
                "details",
            ],
            "properties": {
                "id": uuid_,
                "occurred_at": {"type": "string", "format": "date-time"},
                "key_id": {
                    "type": ["string", "null"],
                    "format": "uuid",
                    "description": "The secret key that did it.",
                },
                "request_id": {
                    **nullable_string,
                    "description": "The `X-Request-Id` of the request that did it.",
                },
                "action": {"type": "string", "enum": list(AUDIT_ACTIONS)},
                "target": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "enum": ["project", "key", "subject", "destination"],
                        },
                        "id": {
                            "type": "string",
                            "description": "A project or key id; for a subject, the keyed "
                            "digest (never the person's identifier).",
                        },
                    },
                },
                "project_id": {"type": ["string", "null"], "format": "uuid"},
                "details": obj,
            },
        },
        "AuditLog": {
            "type": "object",
            "required": ["entries", "next_cursor"],
            "properties": {
                "entries": {"type": "array", "items": _ref("AuditEntry")},
                "next_cursor": {
                    **nullable_string,
                    "description": "Pass as `cursor` for the next (older) page; null at the end.",
                },
            },
        },
        "SubjectRequest": {
            "type": "object",
            "description": "Exactly one identifier. A raw email or phone is normalized and "
            "hashed as at ingest (a national phone number in the project's `default_country`); "
            "every stored digest variant matches.",
            "properties": {
                "user_id": subject_value,
                "anonymous_id": subject_value,
                "email": {**subject_value, "format": "email"},
                "phone": {**subject_value, "examples": ["+1 415 555 0100"]},
                "email_sha256": {**sha256_hex, "description": "Hex SHA-256 of the email."},
                "phone_sha256": {**sha256_hex, "description": "Hex SHA-256 of the phone."},
            },
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
        "ExportedEvent": {
            "type": "object",
            "description": "One stored event, one per line of an export (NDJSON).",
            "required": list(exported_props),
            "properties": exported_props,
        },
        "UserState": {
            "type": "object",
            "required": [
                "user_id",
                "traits",
                "events",
                "first_seen",
                "last_seen",
                "traits_updated_at",
            ],
            "properties": {
                "user_id": {"type": "string"},
                "traits": {
                    **obj,
                    "description": "The identify traits merged in arrival order: a later "
                    "identify overwrites the traits it names.",
                },
                "events": {**count, "description": "Stored events of this user."},
                "first_seen": {**nullable_time, "description": "The earliest event timestamp."},
                "last_seen": {**nullable_time, "description": "The latest event timestamp."},
                "traits_updated_at": nullable_time,
            },
        },
        "ErasureReceipt": {
            "type": "object",
            "description": "Proof of an erasure that never names the person.",
            "required": [
                "id",
                "project_id",
                "subject",
                "request_id",
                "status",
                "deleted",
                "identifiers_suppressed",
                "requested_at",
                "completed_at",
                "forwarded",
            ],
            "properties": {
                "id": uuid_,
                "project_id": uuid_,
                "subject": {
                    "type": "object",
                    "required": ["kind", "digest"],
                    "properties": {
                        "kind": {
                            "type": "string",
                            "enum": ["user_id", "anonymous_id", "email", "phone"],
                        },
                        "digest": {
                            "type": "string",
                            "pattern": "^[0-9a-f]{64}$",
                            "description": "HMAC-SHA256 under the project's own key: not the "
                            "identifier, and not found again by hashing guesses.",
                        },
                    },
                },
                "request_id": nullable_string,
                "status": {
                    "type": "string",
                    "enum": ["running", "completed"],
                    "description": "An erasure answers when completed; a list may show one "
                    "still running.",
                },
                "deleted": {
                    "type": "object",
                    "description": "Rows deleted, per data class: events, message_ids, "
                    "user_profiles, forward_queue (outbox rows waiting or dead, with their "
                    "device ids).",
                    "additionalProperties": count,
                },
                "forwarded": {
                    "type": "array",
                    "description": "Destinations that had already received the person's "
                    "events: pass the erasure on to them (GDPR Art. 19).",
                    "items": {
                        "type": "object",
                        "required": [
                            "destination_id",
                            "name",
                            "type",
                            "events_delivered",
                            "first_delivered_at",
                            "last_delivered_at",
                        ],
                        "properties": {
                            "destination_id": uuid_,
                            "name": {
                                **nullable_string,
                                "description": "Null when the destination was deleted since.",
                            },
                            "type": nullable_string,
                            "events_delivered": count,
                            "first_delivered_at": {"type": "string", "format": "date-time"},
                            "last_delivered_at": {"type": "string", "format": "date-time"},
                        },
                    },
                },
                "identifiers_suppressed": {
                    **count,
                    "description": "User ids, anonymous ids, emails and phones now refused.",
                },
                "requested_at": {"type": "string", "format": "date-time"},
                "completed_at": nullable_time,
            },
        },
        "ErasureList": {
            "type": "object",
            "required": ["erasures", "next_cursor"],
            "properties": {
                "erasures": {"type": "array", "items": _ref("ErasureReceipt")},
                "next_cursor": {
                    **nullable_string,
                    "description": "Pass as `cursor` for the next (older) page; null at the end.",
                },
            },
        },
        **_destination_schemas(uuid_, count, nullable_string, nullable_time),
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


def _destination_schemas(
    uuid_: dict[str, Any],
    count: dict[str, Any],
    nullable_string: dict[str, Any],
    nullable_time: dict[str, Any],
) -> dict[str, Any]:
    """Forwarding destinations and their dead letters (ingest/destinations.py)."""
    event_types = {
        "type": ["array", "null"],
        "items": {
            "type": "string",
            "enum": ["track", "identify", "page", "screen", "group", "alias"],
        },
        "minItems": 1,
        "uniqueItems": True,
        "description": "The event types it takes; null: every type. Default: null for a "
        "webhook, track, page and screen for a conversions API.",
    }
    settings = {
        "type": "object",
        "description": "A conversions API takes `action_source` (Meta's values; default: "
        "`app` for app events, else `website`) and `test_event_code`; a webhook takes none.",
        "properties": {
            "action_source": {
                "type": "string",
                "enum": [
                    "website",
                    "app",
                    "email",
                    "phone_call",
                    "chat",
                    "physical_store",
                    "system_generated",
                    "business_messaging",
                    "other",
                ],
            },
            "test_event_code": {"type": "string", "minLength": 1, "maxLength": 100},
        },
        "additionalProperties": False,
    }
    name = {"type": "string", "minLength": 1, "maxLength": 200}
    url = {
        "type": "string",
        "maxLength": 2048,
        "description": "https (http only with INGEST_DESTINATIONS_ALLOW_PRIVATE), no "
        "credentials, no fragment; its host must resolve to public addresses only.",
        "examples": ["https://hooks.example.com/ingest"],
    }
    token = {
        "type": "string",
        "minLength": 1,
        "maxLength": 1024,
        "description": "Conversions API only: sent in the request body, never shown again.",
    }
    destination_props: dict[str, Any] = {
        "id": uuid_,
        "project_id": uuid_,
        "type": {"type": "string", "enum": ["webhook", "conversions_api"]},
        "name": {"type": "string"},
        "url": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["active", "paused"],
            "description": "paused: nothing is sent; the outbox keeps filling.",
        },
        "event_types": event_types,
        "settings": {"type": "object", "additionalProperties": True},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "has_access_token": {"type": "boolean", "description": "Conversions API only."},
        "queue": {
            "type": "object",
            "required": ["pending", "dead_letters", "oldest_pending_at"],
            "properties": {
                "pending": count,
                "dead_letters": count,
                "oldest_pending_at": nullable_time,
            },
        },
    }
    required = [
        "id",
        "project_id",
        "type",
        "name",
        "url",
        "status",
        "event_types",
        "settings",
        "created_at",
        "updated_at",
        "queue",
    ]
    return {
        "Destination": {
            "type": "object",
            "required": required,
            "properties": destination_props,
        },
        "DestinationCreated": {
            "type": "object",
            "required": required,
            "properties": {
                **destination_props,
                "signing_secret": {
                    "type": "string",
                    "pattern": "^whsec_",
                    "description": "Webhook only, in this answer only: the HMAC-SHA256 key of "
                    "X-Ingest-Signature.",
                },
            },
        },
        "DestinationList": {
            "type": "object",
            "required": ["destinations"],
            "properties": {"destinations": {"type": "array", "items": _ref("Destination")}},
        },
        "DestinationCreate": {
            "type": "object",
            "required": ["type", "name", "url"],
            "properties": {
                "type": {"type": "string", "enum": ["webhook", "conversions_api"]},
                "name": name,
                "url": url,
                "event_types": event_types,
                "settings": settings,
                "access_token": token,
            },
            "additionalProperties": False,
        },
        "DestinationPatch": {
            "type": "object",
            "minProperties": 1,
            "properties": {
                "name": name,
                "url": url,
                "status": {"type": "string", "enum": ["active", "paused"]},
                "event_types": event_types,
                "settings": settings,
                "access_token": token,
            },
            "additionalProperties": False,
        },
        "DeadLetterList": {
            "type": "object",
            "required": ["dead_letters", "next_cursor"],
            "properties": {
                "dead_letters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": [
                            "id",
                            "message_id",
                            "type",
                            "event",
                            "received_at",
                            "attempts",
                            "last_error",
                            "created_at",
                            "dead_at",
                        ],
                        "properties": {
                            "id": {"type": "string", "pattern": "^[0-9]+$"},
                            "message_id": {"type": "string"},
                            "type": {"type": "string"},
                            "event": nullable_string,
                            "received_at": {"type": "string", "format": "date-time"},
                            "attempts": count,
                            "last_error": {
                                **nullable_string,
                                "description": "An HTTP status (http_400) or an error class "
                                "(timeout, forbidden_address, expired); never a body.",
                            },
                            "created_at": {"type": "string", "format": "date-time"},
                            "dead_at": nullable_time,
                        },
                    },
                },
                "next_cursor": nullable_string,
            },
        },
        "DeadLetterRetry": {
            "type": "object",
            "description": "Empty, `{}` (every dead letter) or the ids to retry.",
            "properties": {
                "ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                }
            },
            "additionalProperties": False,
        },
        "DeadLettersRetried": {
            "type": "object",
            "required": ["retried"],
            "properties": {"retried": count},
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
        if status == 409:
            # Only idempotency-in-flight carries it.
            response["headers"] = {"Retry-After": {**retry_after, "required": False}}
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


def _partner_paths() -> dict[str, Any]:
    """The partner routes (ingest/manage.py, ingest/subjects.py): an organization secret key."""
    secret = '-H "Authorization: Bearer $SECRET_KEY"'  # noqa: S105  # a shell variable's name
    # A retry-safe call: the same Idempotency-Key within 24 h gets the first answer again.
    retry_safe = f'{secret} \\\n  -H "Idempotency-Key: $(uuidgen)"'
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "8 to 255 visible ASCII characters, optionally quoted (a UUID is "
        "ideal). The same key with the same method, path and body within 24 h replays the "
        "first answer (`Idempotent-Replayed: true`); with another request: 422; while the "
        "first still runs: 409; when the first issued a key: 409 key-already-issued. A "
        "failed request keeps nothing.",
        "schema": {"type": "string", "pattern": "^[!-~]{8,255}$"},
    }

    def path_id(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": description,
            "schema": {"type": "string", "format": "uuid"},
        }

    project_id = path_id("project_id", "The project (one of the key's organization).")
    key_id = path_id("key_id", "The key's `id`.")
    user_id = {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": "The user id, URL-encoded. One holding `/` cannot be a path segment: "
        "use the POST routes with `user_id` in the body.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/]+$"},
    }
    limit = {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Entries per page, 1 to 200 (default 50).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
    }
    cursor = {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "The `next_cursor` of the previous page; anything else is a 400.",
        "schema": {"type": "string"},
    }

    def read(
        summary: str,
        description: str,
        tag: str,
        schema: dict[str, Any],
        answer: str,
        curl: str,
        parameters: list[Any],
        errors: tuple[int, ...] = (),
    ) -> dict[str, Any]:
        return _operation(
            summary,
            description,
            tag,
            SECRET_KEY,
            _responses(200, schema, answer, (*PARTNER_READ_ERRORS, *errors)),
            _curl("GET", curl, secret, None),
            parameters=parameters,
        )

    def write(
        method: str,
        summary: str,
        description: str,
        tag: str,
        responses: Any,
        curl: tuple[str, str | None],
        parameters: list[Any],
        request_body: Any = None,
    ) -> dict[str, Any]:
        path, body = curl
        return _operation(
            summary,
            description,
            tag,
            SECRET_KEY,
            responses,
            _curl(method, path, retry_safe if method == "POST" else secret, body),
            request_body,
            [*parameters, idempotency_key],
        )

    def answer(status: int, schema: dict[str, Any], text: str, errors: tuple[int, ...]) -> Any:
        return _replayable(_responses(status, schema, text, errors))

    def export_answer(text: str, errors: tuple[int, ...]) -> Any:
        out = _responses(200, {}, text, errors)
        out["200"]["content"] = {
            NDJSON: {
                "schema": {
                    "type": "string",
                    "description": "One ExportedEvent JSON object per line, oldest first "
                    "(received_at, message_id); empty when there is none.",
                }
            }
        }
        return out

    paths: dict[str, Any] = {}
    paths["/v1/projects"] = {
        "get": read(
            "List projects",
            "Every project of the key's organization, oldest first.",
            "Projects",
            _ref("ProjectList"),
            "The projects.",
            "/v1/projects",
            [],
        ),
        "post": write(
            "POST",
            "Create a project",
            "A new project of the key's organization, with its first write key (its secret is "
            "in this answer only). Audited: project.create, key.create.",
            "Projects",
            answer(
                201, _ref("ProjectCreated"), "The project and its write key.", PARTNER_BODY_ERRORS
            ),
            ("/v1/projects", '{"name":"iOS app","default_country":"US"}'),
            [],
            _json_body(_ref("ProjectCreate")),
        ),
    }
    # The keys of a project, then the organization's own secret keys: the same four routes.
    for prefix, scope, tag, params in (
        ("/v1/projects/{project_id}", "the project's write keys", "Projects", [project_id]),
        ("", "the organization's secret keys", "Keys", []),
    ):
        is_write = bool(prefix)
        base = f"{prefix}/keys" if is_write else "/v1/keys"
        shown_base = base.replace("{project_id}", "$PROJECT_ID")
        not_found = (404,) if is_write else ()
        paths[base] = {
            "get": read(
                "List write keys" if is_write else "List secret keys",
                f"Every one of {scope}, with its status (`active`, `expiring` after a rotation "
                "with grace, `revoked`); never the key itself.",
                tag,
                _ref("KeyList"),
                "The keys.",
                shown_base,
                params,
                not_found,
            ),
            "post": write(
                "POST",
                "Issue a write key" if is_write else "Issue a secret key",
                (
                    "Another write key for the project; `server_side` marks one whose "
                    "`context.ip` is trusted. The body may be empty."
                    if is_write
                    else "Another secret key for the organization. The body is empty or `{}`."
                )
                + " The key is in this answer only. Audited: key.create.",
                tag,
                answer(
                    201,
                    _ref("KeyCreated") if is_write else _ref("IssuedKey"),
                    "The key (shown once).",
                    PARTNER_BODY_ERRORS,
                ),
                (shown_base, '{"server_side":true}' if is_write else "{}"),
                params,
                _json_body(
                    _ref("KeyCreate") if is_write else _ref("SecretKeyCreate"), required=False
                ),
            ),
        }
        paths[f"{base}/{{key_id}}"] = {
            "delete": write(
                "DELETE",
                "Revoke a write key" if is_write else "Revoke a secret key",
                "Refused everywhere within the key cache TTL (1 s). Revoking a revoked key "
                "answers 200 again"
                + (
                    "."
                    if is_write
                    else "; revoking the organization's last working secret key is a 409 "
                    "conflict (issue another first)."
                )
                + " Audited: key.revoke.",
                tag,
                answer(200, _ref("KeyInfo"), "The key, `revoked`.", (*PARTNER_WRITE_ERRORS, 404)),
                (f"{shown_base}/$KEY_ID", None),
                [*params, key_id],
            )
        }
        paths[f"{base}/{{key_id}}/rotate"] = {
            "post": write(
                "POST",
                "Rotate a write key" if is_write else "Rotate a secret key",
                "Issue the key's successor (shown once). The old key keeps working for "
                "`grace_seconds` (default 0: refused at once), then is refused with 401. "
                "Rotating a revoked key is a 404. Audited: key.rotate, key.create.",
                tag,
                answer(
                    201,
                    _ref("KeyRotated"),
                    "The new key, and the old one as `replaces`.",
                    (*PARTNER_BODY_ERRORS, 404),
                ),
                (f"{shown_base}/$KEY_ID/rotate", '{"grace_seconds":86400}'),
                [*params, key_id],
                _json_body(_ref("KeyRotate"), required=False),
            )
        }
    paths["/v1/audit-log"] = {
        "get": read(
            "Read the audit log",
            "The organization's audit log, newest first, kept forever. Each entry names the "
            "secret key and the request (`X-Request-Id`) that did it; a data subject appears "
            "only as a keyed digest.",
            "Audit",
            _ref("AuditLog"),
            "A page of entries.",
            "/v1/audit-log?action=subject.erase&limit=100",
            [
                limit,
                cursor,
                {
                    "name": "action",
                    "in": "query",
                    "required": False,
                    "description": "Only entries of this action.",
                    "schema": {"type": "string", "enum": list(AUDIT_ACTIONS)},
                },
                {
                    "name": "key_id",
                    "in": "query",
                    "required": False,
                    "description": "Only entries made with this secret key.",
                    "schema": {"type": "string", "format": "uuid"},
                },
            ],
            (400,),
        )
    }
    subject_body = _json_body(_ref("SubjectRequest"), text=False)
    users = "/v1/projects/$PROJECT_ID/events/users/$USER_ID"
    paths["/v1/projects/{project_id}/events/users/{user_id}"] = {
        "get": _operation(
            "Export a user's events",
            "Every stored event of the user, as NDJSON, oldest first, streamed. A user with "
            "nothing (or erased) is a 200 with an empty body. Audited: subject.export.",
            "Data subjects",
            SECRET_KEY,
            export_answer("The events (NDJSON).", (*PARTNER_READ_ERRORS, 404)),
            _curl("GET", users, secret, None),
            parameters=[project_id, user_id],
        ),
        "delete": write(
            "DELETE",
            "Erase a user",
            "Delete the user's events, the events of the anonymous ids, emails and phones "
            "their events link to (one hop), their current state and message ids; then "
            "suppress every one of those identifiers: later events naming one are answered "
            "200 and not stored. Audited: subject.erase.",
            "Data subjects",
            answer(200, _ref("ErasureReceipt"), "The receipt.", (*PARTNER_WRITE_ERRORS, 404)),
            (users, None),
            [project_id, user_id],
        ),
    }
    paths["/v1/projects/{project_id}/users/{user_id}"] = {
        "get": read(
            "Read a user's current state",
            "The identify traits merged in arrival order, the number of events, first and "
            "last seen. 404 when the project holds nothing about the user.",
            "Data subjects",
            _ref("UserState"),
            "The user's state.",
            "/v1/projects/$PROJECT_ID/users/$USER_ID",
            [project_id, user_id],
            (404,),
        )
    }
    paths["/v1/projects/{project_id}/events/export"] = {
        "post": _operation(
            "Export a person's events",
            "Every event carrying the identifier named in the body, as NDJSON (like the user "
            "export, for an anonymous id, email or phone, raw or hashed). Not cached under "
            "`Idempotency-Key`: it is safe to repeat. Audited: subject.export.",
            "Data subjects",
            SECRET_KEY,
            export_answer("The events (NDJSON).", (*PARTNER_BODY_ERRORS, 404)),
            _curl(
                "POST",
                "/v1/projects/$PROJECT_ID/events/export",
                secret,
                '{"email":"ann@example.com"}',
            ),
            subject_body,
            [project_id, idempotency_key],
        )
    }
    paths["/v1/projects/{project_id}/events/erase"] = {
        "post": write(
            "POST",
            "Erase a person",
            "Erase the person the identifier in the body names, exactly as the user erasure "
            "does (one hop of linked identifiers, then suppression). Audited: subject.erase.",
            "Data subjects",
            answer(200, _ref("ErasureReceipt"), "The receipt.", (*PARTNER_BODY_ERRORS, 404)),
            ("/v1/projects/$PROJECT_ID/events/erase", '{"phone":"+1 415 555 0100"}'),
            [project_id],
            subject_body,
        )
    }
    paths["/v1/projects/{project_id}/erasures"] = {
        "get": read(
            "List erasure receipts",
            "The project's erasures, newest first: the list to re-run after restoring a "
            "backup taken before them.",
            "Data subjects",
            _ref("ErasureList"),
            "A page of receipts.",
            "/v1/projects/$PROJECT_ID/erasures",
            [project_id, limit, cursor],
            (400, 404),
        )
    }
    paths["/v1/projects/{project_id}/erasures/{erasure_id}"] = {
        "get": read(
            "Read an erasure receipt",
            "One receipt, by the `id` the erasure answered with.",
            "Data subjects",
            _ref("ErasureReceipt"),
            "The receipt.",
            "/v1/projects/$PROJECT_ID/erasures/$ERASURE_ID",
            [project_id, path_id("erasure_id", "The receipt's `id`.")],
            (404,),
        )
    }
    destination_id = path_id("destination_id", "The destination's `id`.")
    destinations = "/v1/projects/$PROJECT_ID/destinations"
    paths["/v1/projects/{project_id}/destinations"] = {
        "get": read(
            "List destinations",
            "The project's forwarding destinations, each with its queue; never a secret.",
            "Forwarding",
            _ref("DestinationList"),
            "The destinations.",
            destinations,
            [project_id],
            (404,),
        ),
        "post": write(
            "POST",
            "Create a destination",
            "A webhook (signed JSON batches) or a conversions API (Meta's shape). The URL's "
            "host is resolved and must be public. A webhook's signing secret is in this answer "
            "only. Audited: destination.create.",
            "Forwarding",
            answer(
                201,
                _ref("DestinationCreated"),
                "The destination (a webhook's signing secret shown once).",
                (*PARTNER_BODY_ERRORS, 404),
            ),
            (destinations, '{"type":"webhook","name":"warehouse","url":"https://hooks.example"}'),
            [project_id],
            _json_body(_ref("DestinationCreate")),
        ),
    }
    paths["/v1/projects/{project_id}/destinations/{destination_id}"] = {
        "get": read(
            "Read a destination",
            "One destination and its queue.",
            "Forwarding",
            _ref("Destination"),
            "The destination.",
            f"{destinations}/$DESTINATION_ID",
            [project_id, destination_id],
            (404,),
        ),
        "patch": write(
            "PATCH",
            "Change a destination",
            "Rename, re-point (the URL is checked again), pause or resume, or change its "
            "event types, settings or access token. Audited: destination.update.",
            "Forwarding",
            answer(200, _ref("Destination"), "The destination.", (*PARTNER_BODY_ERRORS, 404)),
            (f"{destinations}/$DESTINATION_ID", '{"status":"paused"}'),
            [project_id, destination_id],
            _json_body(_ref("DestinationPatch")),
        ),
        "delete": write(
            "DELETE",
            "Delete a destination",
            "Its waiting rows and their device ids are deleted with it. Audited: "
            "destination.delete.",
            "Forwarding",
            _no_content(),
            (f"{destinations}/$DESTINATION_ID", None),
            [project_id, destination_id],
        ),
    }
    paths["/v1/projects/{project_id}/destinations/{destination_id}/rotate-secret"] = {
        "post": write(
            "POST",
            "Rotate a webhook's signing secret",
            "A new signing secret, in this answer only. With `grace_seconds` (0 to 604800, "
            "default 0) deliveries carry a second `v1` signature made with the old secret "
            "until then. A conversions API has none (400). Audited: destination.rotate_secret.",
            "Forwarding",
            answer(
                200,
                _ref("DestinationCreated"),
                "The destination and its new signing secret (shown once).",
                (*PARTNER_BODY_ERRORS, 404),
            ),
            (f"{destinations}/$DESTINATION_ID/rotate-secret", '{"grace_seconds":86400}'),
            [project_id, destination_id],
            _json_body(
                {
                    "type": "object",
                    "properties": {
                        "grace_seconds": {"type": "integer", "minimum": 0, "maximum": 604800}
                    },
                    "additionalProperties": False,
                },
                required=False,
            ),
        )
    }
    paths["/v1/projects/{project_id}/destinations/{destination_id}/dead-letters"] = {
        "get": read(
            "List dead letters",
            "Rows that will not be retried by themselves, oldest first: their attempts and "
            "last error. Their device ids were deleted when they died.",
            "Forwarding",
            _ref("DeadLetterList"),
            "A page of dead letters.",
            f"{destinations}/$DESTINATION_ID/dead-letters",
            [project_id, destination_id, limit, cursor],
            (400, 404),
        )
    }
    paths["/v1/projects/{project_id}/destinations/{destination_id}/dead-letters/retry"] = {
        "post": write(
            "POST",
            "Retry dead letters",
            "Queue them again (all, or those in `ids`), without device ids. Audited: "
            "destination.retry_dead_letters.",
            "Forwarding",
            answer(
                200,
                _ref("DeadLettersRetried"),
                "How many were queued.",
                (*PARTNER_BODY_ERRORS, 404),
            ),
            (f"{destinations}/$DESTINATION_ID/dead-letters/retry", "{}"),
            [project_id, destination_id],
            _json_body(_ref("DeadLetterRetry"), required=False),
        )
    }
    paths["/v1/projects/{project_id}/crypto-shred"] = {
        "post": write(
            "POST",
            "Crypto-shred a project's identifiers",
            "Replace the project's data key: every email and phone digest it stored sealed so "
            "far can no longer be read by anyone, at once (exports then show them as null). "
            "Events stay, without them; suppressions stay in force; new events are sealed "
            "under the new key. Audited: project.crypto_shred.",
            "Projects",
            answer(200, _ref("ProjectShredded"), "When.", (*PARTNER_WRITE_ERRORS, 404)),
            ("/v1/projects/$PROJECT_ID/crypto-shred", None),
            [project_id],
        ),
    }
    # Last of all: Schemathesis runs the operations in this order, and DELETE removes the
    # project the others are aimed at.
    paths["/v1/projects/{project_id}"] = {
        "get": read(
            "Read a project",
            "One project of the key's organization.",
            "Projects",
            _ref("Project"),
            "The project.",
            "/v1/projects/$PROJECT_ID",
            [project_id],
            (404,),
        ),
        "patch": write(
            "PATCH",
            "Change a project",
            "Change its name, default country, origin allow-list or retention; absent fields "
            "are unchanged, null clears (not the retention days, which cannot be null). "
            "Audited: project.update.",
            "Projects",
            answer(200, _ref("Project"), "The project.", (*PARTNER_BODY_ERRORS, 404)),
            ("/v1/projects/$PROJECT_ID", '{"allowed_origins":["https://shop.example.com"]}'),
            [project_id],
            _json_body(_ref("ProjectPatch")),
        ),
        "delete": write(
            "DELETE",
            "Delete a project",
            "Delete the project and all of its data: events, message ids, current state, "
            "suppressions, erasure receipts and keys. Its write keys are refused within the "
            "key cache TTL (1 s); events still sent with them meanwhile are acknowledged and "
            "not stored. Audited: project.delete (the audit log keeps it).",
            "Projects",
            answer(200, _ref("ProjectDeleted"), "What was deleted.", (*PARTNER_WRITE_ERRORS, 404)),
            ("/v1/projects/$PROJECT_ID", None),
            [project_id],
        ),
    }
    return paths


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
        "in the body. A secret key is refused (403). JSON labelled "
        "`application/x-www-form-urlencoded` is read as JSON too (rudder-sdk-node's gzip bodies)."
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
    query_key = {
        "name": "writeKey",
        "in": "query",
        "required": False,
        "description": "A project write key (`iwk_...`), when there is no Authorization header.",
        "schema": {"type": "string"},
    }
    for path in rudderstack.SOURCE_CONFIG_PATHS:
        paths[path] = {
            "get": _operation(
                "RudderStack source config" + (" (JS SDKs' path)" if path.endswith("/") else ""),
                "What RudderStack's JS, Android and iOS SDKs fetch from their `configUrl` / "
                "`controlPlaneUrl` at start (they send nothing until it answers): the source "
                "enabled, no device-mode destinations, the SDK's own error and metrics reports "
                "off. The write key is the HTTP Basic user, or `writeKey` in the query.",
                "RudderStack",
                [*WRITE_KEY, {}],
                _responses(
                    200,
                    _ref("RudderStackSourceConfig"),
                    "The source config (Cache-Control: no-store).",
                    (401, 403, 503),
                ),
                _curl("GET", path, '-u "$WRITE_KEY:"', None),
                parameters=[query_key],
            )
        }
    paths[rudderstack.BEACON_PATH] = {
        "post": _operation(
            "RudderStack beacon batch",
            "A batch that RudderStack's browser SDK sends with `navigator.sendBeacon` (text/plain, "
            "`{batch, sentAt}`), as `/v1/batch` takes it. A beacon carries no Authorization "
            "header: the write key is `writeKey` in the query (or the Basic user, or the body's "
            "`writeKey`).",
            "RudderStack",
            SEGMENT_KEY,
            _responses(200, _ref("SegmentResults"), "Per-message results.", SDK_ERRORS),
            _curl(
                "POST",
                rudderstack.BEACON_PATH + "?writeKey=$WRITE_KEY",
                "",
                '{"batch":[{"type":"track","anonymousId":"a-1","event":"Left"}]}',
            ),
            _json_body(_ref("SegmentBatch")),
            parameters=[query_key],
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
    paths |= _partner_paths()
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
            {
                "name": "RudderStack",
                "description": "What RudderStack's SDKs call beyond the Tracking API (which they "
                "share with Segment's).",
            },
            {"name": "PostHog", "description": "PostHog's capture API, for the PostHog SDKs."},
            {
                "name": "Projects",
                "description": "Partner routes, with an organization secret key: projects and "
                "their write keys. Every POST, PATCH and DELETE of a partner route honours "
                "`Idempotency-Key`.",
            },
            {"name": "Keys", "description": "The organization's own secret keys."},
            {"name": "Audit", "description": "Who did what with the organization's keys."},
            {
                "name": "Data subjects",
                "description": "Access, current state and erasure of one person's data "
                "(GDPR articles 15, 17 and 20).",
            },
            {
                "name": "Forwarding",
                "description": "Destinations that receive the project's events (signed "
                "webhooks, conversions APIs), and their dead letters.",
            },
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
