"""Run ``python -m fex.serve`` as a child process on 127.0.0.1 (tests, the load test)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """Start the server at a free port, wait until ``/health`` answers 200, stop its whole process group.

    ``overrides`` are ``key=value`` settings of conf/serve.yaml. Use as a context manager."""

    def __init__(self, checkpoint: str, *overrides: str, log: str | os.PathLike | None = None,
                 ready_s: float = 900, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.checkpoint = str(checkpoint)
        penv = {**os.environ, **(env or {})}
        penv["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), penv.get("PYTHONPATH", "")) if p)
        self._log: IO = open(log, "ab") if log else open(os.devnull, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "fex.serve", f"checkpoint={checkpoint}",
                                      "host=127.0.0.1", f"port={self.port}", *overrides], cwd=ROOT, env=penv,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(ready_s)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, limit: float) -> None:
        t0 = time.time()
        while time.time() - t0 < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fex-serve exited with code {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"fex-serve not ready after {limit:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
