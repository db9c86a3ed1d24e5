"""A real Alertmanager for tests, and a webhook receiver that records what it sends."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from tests.servers import free_port, http_get, wait_http_ready


class WebhookReceiver:
    """An HTTP server on 127.0.0.1, in a thread, that stores every JSON payload POSTed to it.

    Alertmanager's webhook payload is ``{"status", "receiver", "groupLabels", ...,
    "alerts": [{"status", "labels", "annotations", "startsAt", ...}]}``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._payloads: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def payloads(self) -> list[dict]:
        with self._lock:
            return list(self._payloads)

    def alerts(self) -> list[dict]:
        """Return every alert of every payload received so far, in arrival order."""
        return [alert for payload in self.payloads() for alert in payload.get("alerts", [])]

    def wait_alert(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """Return the first received alert that matches ``predicate``, or None at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for alert in self.alerts():
                if predicate(alert):
                    return alert
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, body: bytes) -> None:
        payload = json.loads(body)
        with self._lock:
            self._payloads.append(payload)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    receiver._record(body)
                except json.JSONDecodeError:
                    self.send_response(400)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # keeps pytest's captured output free of one line per POST

        return Handler


class Alertmanager:
    """Debian's prometheus-alertmanager on 127.0.0.1 with one route to a webhook, stopped by PID.

    The cluster listener is disabled, so no gossip port opens. Every alert goes to
    ``webhook_url``, and each label set is a notification group of its own.
    """

    def __init__(
        self,
        webhook_url: str,
        *,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
    ) -> None:
        binary = shutil.which("prometheus-alertmanager")
        if binary is None:
            raise RuntimeError(
                "prometheus-alertmanager is not installed; `make test` installs the Debian package"
            )
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="alertmanager-")
        config = {
            "route": {
                "receiver": "webhook",
                # "..." groups by every label, so each alert is sent on its own.
                "group_by": ["..."],
                "group_wait": group_wait,
                "group_interval": group_interval,
                "repeat_interval": repeat_interval,
            },
            "receivers": [{
                "name": "webhook",
                "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
            }],
        }
        # JSON is valid YAML, so the config needs no YAML writer.
        path = Path(self.directory, "alertmanager.yml")
        path.write_text(json.dumps(config, indent=2))
        self.log = open(Path(self.directory, "alertmanager.log"), "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.path={self.directory}/data",
             f"--web.listen-address={self.address}", "--cluster.listen-address="],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        """host:port, as Prometheus' ``alertmanager`` setting takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_http_ready(self.process, f"{self.url}/-/ready", "alertmanager", self.output, timeout)

    def alerts(self) -> list[dict]:
        """Return the alerts stored in Alertmanager now (GET /api/v2/alerts), silenced and inhibited ones included."""
        status, _, body = http_get(f"{self.url}/api/v2/alerts")
        if status != 200:
            raise RuntimeError(f"GET {self.url}/api/v2/alerts returned HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def output(self) -> str:
        return Path(self.directory, "alertmanager.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)
