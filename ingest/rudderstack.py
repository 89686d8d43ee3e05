"""What RudderStack's SDKs call beyond Segment's Tracking API, so they too need only our host.

RudderStack's data plane speaks the Tracking API (``/v1/track``, ``/v1/batch``...: segment.py).
Its client SDKs (JS, Android, iOS) also fetch a source config from the control plane at start
and send nothing until it answers; the browser SDK sends its last events with sendBeacon, whose
URL carries the write key.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.auth import presented_key
from ingest.jsonx import JSONResponse
from ingest.logs import LOG_STATE
from ingest.origins import check_origin
from ingest.routes import services
from ingest.segment import track_api, write_key

# Android and iOS ask for /sourceConfig, the JS SDKs for /sourceConfig/ (with the key in the
# query as well as in Basic auth).
SOURCE_CONFIG_PATHS: Final = ("/sourceConfig", "/sourceConfig/")
SOURCE_CONFIG_PATH: Final = re.compile(r"/sourceConfig/?")
BEACON_PATH: Final = "/beacon/v1/batch"
WRITE_PATHS: Final = frozenset({BEACON_PATH})


async def get_source_config(request: Request) -> Response:
    """The source config RudderStack's client SDKs fetch from ``configUrl`` /
    ``controlPlaneUrl``: enabled, no device-mode destinations, and the SDK's own error and
    metrics reports to RudderStack turned off (as the Segment settings turn analytics.js's off).
    """
    svc = services(request)
    plaintext = presented_key(request) or request.query_params.get("writeKey")
    key = await write_key(svc, plaintext)
    request.scope[LOG_STATE].update(
        org_id=str(key.org_id), key_id=str(key.key_id), project_id=str(key.project_id)
    )
    check_origin(request, key.allowed_origins)
    project = str(key.project_id)
    source: dict[str, object] = {
        # The JS SDK requires an id, a config object and a destinations array; the mobile SDKs
        # require enabled: true, and stop on a null config or destinations.
        "id": project,
        "name": project,
        "workspaceId": project,
        "writeKey": plaintext,
        "enabled": True,
        "config": {
            "statsCollection": {"errors": {"enabled": False}, "metrics": {"enabled": False}},
        },
        # Device-mode destinations would load third-party code in the page; ours forward from
        # the server (destinations are per project, see the README's Forwarding).
        "destinations": [],
        # No "dataplanes": the JS v1.1 and mobile SDKs would take it over the data plane URL
        # they were given.
    }
    return JSONResponse(
        {"isHosted": False, "source": source}, headers={"Cache-Control": "no-store"}
    )


async def post_beacon_batch(request: Request) -> Response:
    """sendBeacon's batch: ``{"batch": [...], "sentAt"}`` as text/plain, ``?writeKey=`` in the
    URL since a beacon cannot carry an Authorization header."""
    return await track_api(request, None, query_key=True)


ROUTES: Final = [
    *(Route(path, get_source_config, methods=["GET"]) for path in SOURCE_CONFIG_PATHS),
    Route(BEACON_PATH, post_beacon_batch, methods=["POST"]),
]
