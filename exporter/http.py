"""HTTP endpoints: /metrics, /healthz, /readyz and an index page."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

INDEX = """<!doctype html>
<html><head><title>Storm termination exporter</title></head>
<body><h1>Storm termination exporter</h1>
<p>Version {version}. Event sources: {sources}.</p>
<ul>
<li><a href="{metrics}">Metrics</a></li>
<li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li>
<li><a href="/debug/workers">Workers and their diagnosis (JSON)</a></li>
</ul></body></html>
"""


def build_app(
    *,
    registry: CollectorRegistry,
    telemetry_path: str,
    ready: Callable[[], bool],
    describe_sources: Callable[[], str],
    version: str,
    debug_workers: Callable[[], dict] | None = None,
) -> web.Application:
    """Return the aiohttp application serving the exporter's endpoints."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(None, encoder, registry)
        headers = {"Content-Type": content_type}
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(
            status=503, text="not ready: the first /proc scan or the first pod list has not finished\n"
        )

    async def index(request: web.Request) -> web.Response:
        page = INDEX.format(version=version, sources=describe_sources(), metrics=telemetry_path)
        return web.Response(text=page, content_type="text/html")

    async def workers(request: web.Request) -> web.Response:
        document = debug_workers() if debug_workers is not None else {"workers": []}
        return web.json_response(document, dumps=lambda value: json.dumps(value, indent=2))

    app = web.Application()
    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/workers", workers)
    app.router.add_get("/", index)
    return app


def _accepts_gzip(header: str) -> bool:
    """Return whether an Accept-Encoding header allows gzip (``gzip;q=0`` forbids it)."""
    for part in header.split(","):
        coding, _, parameters = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = parameters.strip()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False
