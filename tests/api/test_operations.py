"""What operators see: health, readiness, metrics and the one log line per request."""

from __future__ import annotations

import io
from typing import Any

import httpx
import orjson

from tests.conftest import bearer, client_for


def _lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _request_lines(stream: io.BytesIO, route: str) -> list[dict[str, Any]]:
    """The request lines logged for ``route`` (fixtures' own requests are logged too)."""
    return [
        x
        for x in _lines(stream)
        if x.get("event") == "request_finished" and x.get("route") == route
    ]


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class TestProbes:
    async def test_healthz_and_readyz(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}


class TestMetrics:
    async def test_metrics_count_requests_events_and_rejections(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        batch = [{"event": "x", "user_id": "u"}, {"event": "x"}, {"event": "y", "user_id": "v"}]
        await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert 'ingest_requests_total{method="POST",route="/v1/events",status="200"} 1.0' in text
        assert _metric(text, "ingest_events_accepted_total") == 2
        assert 'ingest_events_rejected_total{reason="missing_field"} 1.0' in text
        assert _metric(text, "ingest_request_duration_seconds_count") >= 2
        assert _metric(text, "ingest_write_batch_size_count") == 1
        assert 'ingest_pool_connections{state="max"} 4.0' in text
        assert _metric(text, "ingest_database_durable") == 1
        assert _metric(text, "ingest_geoip_database_build_timestamp_seconds") > 1.7e9

    async def test_event_names_never_become_label_values(
        self, client: httpx.AsyncClient, write_key: str
    ) -> None:
        batch = [{"event": f"name-{i}", "user_id": "u"} for i in range(50)]
        await client.post("/v1/events", json={"batch": batch}, headers=bearer(write_key))
        text = (await client.get("/metrics")).text
        assert "name-1" not in text

    async def test_unmatched_routes_share_one_label(self, client: httpx.AsyncClient) -> None:
        for path in ("/a", "/b/c", "/wp-admin"):
            assert (await client.get(path)).status_code == 404
        text = (await client.get("/metrics")).text
        assert 'route="unmatched",status="404"} 3.0' in text
        assert "wp-admin" not in text


class TestRequestLog:
    async def test_one_line_per_request_with_tenant_route_status_and_counts(
        self,
        client: httpx.AsyncClient,
        write_key: str,
        project: Any,
        org: Any,
        log_stream: io.BytesIO,
    ) -> None:
        r = await client.post(
            "/v1/events",
            json={"batch": [{"event": "x", "user_id": "u"}, {"event": "x"}]},
            headers=bearer(write_key),
        )
        [line] = _request_lines(log_stream, "/v1/events")
        assert line["request_id"] == r.headers["x-request-id"]
        assert line["org_id"] == org["org_id"]
        assert line["key_id"] == project["write_key"]["id"]
        assert line["project_id"] == project["id"]
        assert (line["method"], line["status"]) == ("POST", 200)
        assert (line["events_accepted"], line["events_rejected"]) == (1, 1)
        assert line["duration_ms"] > 0
        assert line["level"] == "info"
        raw = log_stream.getvalue().decode()
        assert write_key not in raw
        assert "authorization" not in raw.lower()

    async def test_route_is_the_template_not_the_path(
        self, client: httpx.AsyncClient, secret_key: str, project: Any, log_stream: io.BytesIO
    ) -> None:
        await client.post(f"/v1/projects/{project['id']}/keys", json={}, headers=bearer(secret_key))
        routes = {x.get("route") for x in _lines(log_stream)}
        assert "/v1/projects/{project_id}/keys" in routes
        assert not any(project["id"] in str(route) for route in routes)

    async def test_errors_are_logged_with_their_status(
        self, client: httpx.AsyncClient, log_stream: io.BytesIO
    ) -> None:
        await client.post("/v1/events", json={"event": "x"}, headers=bearer("iwk_" + "a" * 43))
        [line] = [x for x in _lines(log_stream) if x.get("event") == "request_finished"]
        assert line["status"] == 401
        assert "org_id" not in line


async def test_client_chosen_methods_never_become_label_values_or_log_text(
    client: httpx.AsyncClient, log_stream: io.BytesIO
) -> None:
    """An HTTP method is any token; '+14155550100' is one. It must not reach a label or a log."""
    r = await client.request("+14155550100", "/v1/events")
    assert r.status_code == 405
    text = (await client.get("/metrics")).text
    assert "14155550100" not in text
    assert 'method="OTHER"' in text
    assert "14155550100" not in log_stream.getvalue().decode()


class TestWriteRoutesFastPath:
    """The SDK write routes skip Starlette's router (ingest/fastpath.py): what operators see of
    them must not change."""

    async def test_a_bug_in_a_write_route_is_a_500_problem_logged_by_type_only(
        self,
        app: Any,
        write_key: str,
        log_stream: io.BytesIO,
        monkeypatch: Any,
    ) -> None:
        from ingest.events import EventParser

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("cnry.bug@example.com")

        monkeypatch.setattr(EventParser, "parse", broken)
        async with client_for(app, raise_errors=False) as c:
            r = await c.post(
                "/v1/events", json={"event": "x", "user_id": "u"}, headers=bearer(write_key)
            )
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 500
        lines = _lines(log_stream)
        [error] = [x for x in lines if x.get("event") == "unhandled_error"]
        assert error["error"] == "RuntimeError"
        [line] = _request_lines(log_stream, "/v1/events")
        assert line["status"] == 500
        assert "cnry.bug" not in log_stream.getvalue().decode()

    async def test_segment_routes_are_named_by_their_template_with_cors_and_request_id(
        self, client: httpx.AsyncClient, write_key: str, log_stream: io.BytesIO
    ) -> None:
        r = await client.post(
            "/v1/track",
            json={"event": "x", "userId": "u"},
            headers={**bearer(write_key), "Origin": "https://shop.example"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        [line] = _request_lines(log_stream, "/v1/track")
        assert line["request_id"] == r.headers["x-request-id"]
        metrics = (await client.get("/metrics")).text
        assert 'ingest_requests_total{method="POST",route="/v1/track",status="200"} 1.0' in metrics
