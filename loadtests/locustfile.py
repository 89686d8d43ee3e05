"""Locust traffic for an ingest deployment: SDK events (most of the load) plus a partner's server.

Locust is not a dependency of ingest. Install it where you run the load, for example::

    python -m venv /tmp/locust && /tmp/locust/bin/pip install locust

then point it at a running service with keys made for the test::

    ingest admin create-org loadtest                  # prints secret_key.key
    curl -X POST http://127.0.0.1:8000/v1/projects \\
         -H "Authorization: Bearer $INGEST_SECRET_KEY" -H "Content-Type: application/json" \\
         -d '{"name": "locust"}'                      # prints write_key.key
    export INGEST_WRITE_KEY=... INGEST_SECRET_KEY=...
    /tmp/locust/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000
    # or headless: --headless -u 200 -r 20 -t 2m

Users:

- ``SdkUser`` (weight 50): one app install. It sends single events (``POST /v1/events``) and,
  less often, batches of 10 to 100 events the way the SDKs flush their queues, each event with its
  own ``message_id``. A 503 is retried once with the same body (the same message ids), which the
  service must deduplicate: Locust reports it under ``[retry]``.
- ``PartnerUser`` (weight 1): the partner's server, creating a project now and then
  (``POST /v1/projects``) and issuing it a second write key, and more often reading its
  projects' forwarding queues (``GET /v1/projects/{id}/destinations``, what a monitoring job
  polls). Needs ``INGEST_SECRET_KEY``.

Every answer is checked: an events answer must be 200 with every event accepted (or, on a retry,
a duplicate), otherwise the request counts as a failure with the reason.

Locust measures from Python clients, so it does not find the service's ceiling (use
``python -m loadtests.bench`` for that); it shows how a mixed, realistic load behaves.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # Locust is installed only where load is generated, never in the project's environment, so
    # the type checker sees these stand-ins for the few names used here.
    _F = TypeVar("_F", bound=Callable[..., Any])

    class FastHttpUser:
        client: Any
        host: str | None
        weight: int
        wait_time: Callable[..., float]

        def __init__(self, environment: Any) -> None: ...

    class StopUser(Exception):  # locust's own name
        ...

    def task(weight: int) -> Callable[[_F], _F]: ...

    def between(min_wait: float, max_wait: float) -> Callable[..., float]: ...

else:
    from locust import FastHttpUser, between, task
    from locust.exception import StopUser

WRITE_KEY = os.environ.get("INGEST_WRITE_KEY", "")
SECRET_KEY = os.environ.get("INGEST_SECRET_KEY", "")

PAGES = ("/", "/products/sku-1", "/products/sku-2", "/cart", "/checkout")
EVENTS = ("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SdkUser(FastHttpUser):
    """One app install: an anonymous visitor who may sign in, sending what the SDKs send."""

    weight = 50
    wait_time = between(0.5, 3.0)

    def on_start(self) -> None:
        if not WRITE_KEY:
            raise StopUser("set INGEST_WRITE_KEY to a project's write key")
        self.anonymous_id = str(uuid.uuid4())
        self.user_id: str | None = None
        self.user_agent = random.choice(USER_AGENTS)
        self.headers = {"Authorization": f"Bearer {WRITE_KEY}"}

    def _event(self) -> dict[str, Any]:
        context = {
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "locale": "en-US",
            "userAgent": self.user_agent,
            "page": {"path": random.choice(PAGES)},
        }
        event: dict[str, Any] = {
            "message_id": str(uuid.uuid4()),
            "anonymous_id": self.anonymous_id,
            "timestamp": _now(),
            "context": context,
        }
        if self.user_id is not None:
            event["user_id"] = self.user_id
        roll = random.random()
        if self.user_id is None and roll < 0.05:
            # Signing in: an identify whose traits carry PII, which the service hashes.
            self.user_id = f"user-{uuid.uuid4().hex[:12]}"
            n = random.randrange(10_000)
            event.update(
                type="identify",
                user_id=self.user_id,
                traits={"email": f"user.{n}@example.com", "phone": f"+1 415 555 {n:04d}"},
            )
        elif roll < 0.30:
            event.update(type="page", name=random.choice(PAGES))
        else:
            event.update(
                type="track",
                event=random.choice(EVENTS),
                properties={"product_id": f"sku-{random.randrange(500)}", "price": 19.99},
            )
        return event

    def _post(self, body: dict[str, Any], events: int, name: str, retry: bool = False) -> None:
        with self.client.post(
            "/v1/events",
            json=body,
            headers=self.headers,
            name=f"[retry] {name}" if retry else name,
            catch_response=True,
        ) as response:
            if response.status_code == 503 and not retry:
                response.failure("503: retrying once with the same message ids")
                self._post(body, events, name, retry=True)
                return
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            answer = response.json()
            settled = answer.get("accepted", 0) + (answer.get("duplicates", 0) if retry else 0)
            if settled != events or answer.get("rejected"):
                response.failure(f"{settled} of {events} events accepted: {answer.get('rejected')}")
            else:
                response.success()

    @task(8)
    def single_event(self) -> None:
        self._post(self._event(), 1, "POST /v1/events (1 event)")

    @task(2)
    def batch(self) -> None:
        size = random.randint(10, 100)
        body = {"sent_at": _now(), "batch": [self._event() for _ in range(size)]}
        self._post(body, size, "POST /v1/events (batch)")


class PartnerUser(FastHttpUser):
    """The partner's server: creates a project now and then and issues it another write key."""

    weight = 1
    wait_time = between(5.0, 15.0)

    def on_start(self) -> None:
        if not SECRET_KEY:
            raise StopUser("set INGEST_SECRET_KEY to an organization's secret key")
        self.headers = {"Authorization": f"Bearer {SECRET_KEY}"}
        self.projects: list[str] = []

    @task(3)
    def read_forwarding_queues(self) -> None:
        if not self.projects:
            return
        project_id = random.choice(self.projects)
        with self.client.get(
            f"/v1/projects/{project_id}/destinations",
            headers=self.headers,
            name="GET /v1/projects/{id}/destinations",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")

    @task(1)
    def create_project(self) -> None:
        name = f"locust-{uuid.uuid4().hex[:8]}"
        with self.client.post(
            "/v1/projects",
            json={"name": name},
            headers=self.headers,
            name="POST /v1/projects",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"status {response.status_code}")
                return
            project_id = response.json()["id"]
            self.projects.append(project_id)
        with self.client.post(
            f"/v1/projects/{project_id}/keys",
            json={"server_side": False},
            headers=self.headers,
            name="POST /v1/projects/{id}/keys",
            catch_response=True,
        ) as response:
            if response.status_code != 201:
                response.failure(f"status {response.status_code}")
