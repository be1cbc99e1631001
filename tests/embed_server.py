"""``cloud-hub embed-server`` as a real child process, for the tests that need one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, http_json, wait_until

__all__ = ["EmbedServer"]


class EmbedServer:
    """``cloud-hub embed-server`` on a free loopback port, with no way to download."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "embed-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until ``/health`` answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli", "embed-server", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
            )
        wait_until(self._up, f"embed-server on {self.url}", timeout)

    def _up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-2000:]
        try:
            return http_json(f"{self.url}/health", timeout=1)[0] == 200
        except OSError:
            return False

    def kill(self) -> None:
        """``kill -9`` and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM it if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def embed(self, body: object) -> tuple[int, object]:
        """``POST /v1/embeddings`` with ``body`` as JSON."""
        return http_json(f"{self.url}/v1/embeddings", json.dumps(body).encode(), timeout=60)
