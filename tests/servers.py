"""Real servers for tests: the exporter as a subprocess and a Debian Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_http_ready(
    process: subprocess.Popen, url: str, name: str, output: Callable[[], str], timeout: float
) -> None:
    """Poll ``url`` until it returns 200; raise with ``output()`` when ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{output()}")
        try:
            if http_get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} not ready after {timeout}s:\n{output()}")


class ExporterProcess:
    """The exporter started as `python -m exporter` on 127.0.0.1, stopped by PID."""

    def __init__(self, *flags: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="exporter-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "exporter", f"--web.listen-address={self.address}",
                   "--log.level=debug", *flags]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.process.returncode}:\n{self.output()}")
            try:
                status, _, _ = http_get(f"http://{self.address}/readyz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"exporter not ready after {timeout}s:\n{self.output()}")

    def metrics_text(self) -> str:
        _, _, body = http_get(f"http://{self.address}/metrics")
        return body.decode()

    def samples(self) -> dict[tuple[str, tuple], float]:
        found = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def value(self, name: str, **labels) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def wait_value(self, name: str, expected: float, timeout: float = 10.0, **labels) -> float | None:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.value(name, **labels)
            if value == expected:
                return value
            time.sleep(0.1)
        return value

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()

    def __enter__(self) -> "ExporterProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        os.unlink(self.log.name)


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping targets every second.

    ``target_labels`` are attached to every scraped series, as a ServiceMonitor's
    relabeling attaches ``node``; ``rule_files`` are loaded and evaluated every
    ``evaluation_interval``, and firing alerts go to ``alertmanager`` (host:port).
    """

    def __init__(
        self,
        targets: list[str],
        scrape_interval: str = "1s",
        *,
        job: str = "storm-termination-exporter",
        target_labels: dict[str, str] | None = None,
        rule_files: Sequence[str] = (),
        evaluation_interval: str | None = None,
        alertmanager: str | None = None,
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed; `make test` installs the Debian package")
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="prometheus-")
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "evaluation_interval": evaluation_interval or scrape_interval,
            },
            "rule_files": [str(Path(path).resolve()) for path in rule_files],
            "scrape_configs": [{
                "job_name": job,
                "static_configs": [{"targets": list(targets), "labels": dict(target_labels or {})}],
            }],
        }
        if alertmanager is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        # JSON is valid YAML, so the config needs no YAML writer.
        path = Path(self.directory, "prometheus.yml")
        path.write_text(json.dumps(config, indent=2))
        self.log = open(Path(self.directory, "prometheus.log"), "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={self.directory}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_http_ready(self.process, f"{self.url}/-/ready", "prometheus", self.output, timeout)

    def query(self, expression: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        _, _, body = http_get(url)
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise RuntimeError(f"query {expression!r} failed: {answer}")
        return answer["data"]["result"]

    def scalar(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None

    def wait_scalar(self, expression: str, expected: float, timeout: float = 15.0, tolerance: float = 0.0):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(expression)
            if value is not None and abs(value - expected) <= tolerance:
                return value
            time.sleep(0.25)
        return value

    def output(self) -> str:
        return Path(self.directory, "prometheus.log").read_text(errors="replace")

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
