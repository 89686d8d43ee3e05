"""Every error the API answers with, as RFC 9457 ``application/problem+json``.

A detail names fields, indexes, limits and sizes, never a value: a value may be an email address.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://ingest.dev/problems/"


class Problem(Exception):
    """Bad request."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extensions = extensions
        super().__init__(self.detail)

    @property
    def title(self) -> str:
        # The class docstring is the title (procrastinate's habit): one per kind, never specific.
        return (type(self).__doc__ or "Error").strip().rstrip(".")

    def body(self, instance: str | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extensions)
        return doc


class InvalidJSON(Problem):
    """The body is not valid JSON."""

    slug = "invalid-json"


class InvalidBody(Problem):
    """The body does not have the expected shape."""

    slug = "invalid-body"


class ValidationFailed(Problem):
    """The request is invalid."""

    slug = "validation"


class UnsupportedMediaType(Problem):
    """Unsupported media type or content encoding."""

    status, slug = 415, "unsupported-media-type"


class PayloadTooLarge(Problem):
    """The request exceeds a size limit."""

    status, slug = 413, "payload-too-large"


class InvalidKey(Problem):
    """Missing, unknown or revoked key."""

    status, slug = 401, "invalid-key"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="ingest"'})


class Forbidden(Problem):
    """This key may not be used here."""

    status, slug = 403, "forbidden"


class NotFound(Problem):
    """Not found."""

    status, slug = 404, "not-found"


class Conflict(Problem):
    """The request conflicts with the current state of the resource."""

    status, slug = 409, "conflict"


class IdempotencyInFlight(Problem):
    """A request with this Idempotency-Key is still being processed."""

    status, slug = 409, "idempotency-in-flight"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, retry_after=retry_after)


class KeyAlreadyIssued(Problem):
    """The first request with this Idempotency-Key issued a key, which is shown only once."""

    status, slug = 409, "key-already-issued"


class IdempotencyKeyReused(Problem):
    """This Idempotency-Key was used for another request."""

    status, slug = 422, "idempotency-key-reused"


class Unavailable(Problem):
    """The service cannot store events right now; retry with the same message_id."""

    status, slug = 503, "unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, retry_after=retry_after)


class TooManyRequests(Problem):
    """Too many requests for this key."""

    status, slug = 429, "rate-limited"

    def __init__(self, detail: str | None = None, *, retry_after: int, limit: float) -> None:
        super().__init__(
            detail,
            headers={"Retry-After": str(retry_after), "X-RateLimit-Reset": str(retry_after)},
            retry_after=retry_after,
            limit=limit,
        )


class RequestTimeout(Problem):
    """The request body did not arrive in time."""

    status, slug = 408, "request-timeout"
