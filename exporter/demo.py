"""``make demo``: the exporter and a simulated Storm supervisor on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

ADDRESS = os.environ.get("DEMO_LISTEN_ADDRESS", "127.0.0.1:19715")


def wait_ready(url: str, exporter: subprocess.Popen, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and exporter.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def _stop_on_signal(signum: int, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # Handle SIGINT even when it was inherited as ignored (a background job), and
    # SIGTERM too, so that both stop the exporter and the simulator.
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)
    if os.geteuid() != 0:
        print("Not root: the kernel event sources are unavailable, the exporter will poll /proc.")
    command = [sys.executable, "-m", "exporter", f"--web.listen-address={ADDRESS}", "--leftover.grace=3s"]
    # Own sessions: a Ctrl-C reaches only this script, which stops each child once.
    exporter = subprocess.Popen(command, start_new_session=True)
    simulator = None
    try:
        if not wait_ready(f"http://{ADDRESS}/readyz", exporter):
            print("The exporter did not become ready; see its log above.", file=sys.stderr)
            return 1
        print(f"\nExporter ready: open http://{ADDRESS}/ (metrics at http://{ADDRESS}/metrics)")
        print("Simulated supervisor starting; press Ctrl-C to stop both.\n", flush=True)
        simulator = subprocess.Popen([sys.executable, "-m", "exporter", "simulate"], start_new_session=True)
        simulator.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (simulator, exporter):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (simulator, exporter):
            if process is not None:
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    sys.exit(main())
