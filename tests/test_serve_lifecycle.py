"""fex-serve as an operator runs it: SIGTERM/SIGINT stop it cleanly (requests in flight finish or get
a 503, every process exits, the port is free, exit status 0), a second signal stops it at once, a
model worker killed with SIGKILL is noticed (its requests get a 503 at once, /health goes 503, the
worker is restarted), and start-up errors end in one line with nothing left running.

Each test starts the real server (``python -m fex.serve``) in its own session and signals only its
main process, as systemd, Docker and Kubernetes do."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from fex.serve.process import free_port
from fex.serve.server import pid_alive
from tests.serve_helpers import ROOT, image_checkpoint

pytest.importorskip("litserve")

DELAY = 1.5  # seconds per black-box call: a feature_ablation request takes a few calls
SLOW = {"model": {"_target_": "tests.synth.LinearPatchTarget", "delay": DELAY}, "output": "logits"}


def target_overrides(target: dict) -> list[str]:
    return ([f"+target.model.{k}={v}" for k, v in target["model"].items()]
            + [f"+target.{k}={v}" for k, v in target.items() if k != "model"])


# --------------------------------------------------------------------------- processes
def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    parent[int(d)] = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in out]
        out.update(kids)
        todo.extend(kids)
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def model_workers(pids: set[int]) -> list[int]:
    return [p for p in pids if "spawn_main" in cmdline(p)]


def wait_gone(pids: set[int], limit: float = 15) -> list[int]:
    t0 = time.time()
    while time.time() - t0 < limit:
        left = [p for p in pids if pid_alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def port_free(port: int) -> bool:
    """Whether a new server could listen on the port (SO_REUSEADDR, as uvicorn binds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


class Served:
    """``python -m fex.serve`` in its own session; the test signals the main process only."""

    def __init__(self, ckpt: str, *overrides: str, log=None, ready_s: float = 600) -> None:
        from fex.serve.process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "fex.serve", f"checkpoint={ckpt}", "host=127.0.0.1",
                                      f"port={self.port}", "threads=1", *overrides], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < ready_s:
            assert self.proc.poll() is None, f"fex-serve exited with {self.proc.returncode} before it was ready"
            if self.health() == 200:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError("fex-serve not ready")
        self.pids = descendants(self.proc.pid)

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def close(self) -> None:  # whatever a failed test left
        for p in [self.proc.pid, *self.pids]:
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(10)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def post_slow(url: str, out: dict) -> threading.Thread:
    """A feature_ablation request (a few slow black-box calls) on a thread; ``out`` gets status, reply, seconds."""
    def go() -> None:
        t0 = time.time()
        body = json.dumps({"image": np.full((28, 28), 0.5).tolist(), "method": "feature_ablation"}).encode()
        req = urllib.request.Request(url + "/explain", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                out.update(status=r.status, body=json.loads(r.read()))
        except urllib.error.HTTPError as e:
            out.update(status=e.code, body=json.loads(e.read() or b"{}"))
        except OSError as e:
            out.update(status=None, body=str(e))
        out["seconds"] = time.time() - t0

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return image_checkpoint(tmp_path_factory.mktemp("lifecycle") / "image.ckpt")


def test_sigterm_finishes_requests_in_flight_then_every_process_exits(ckpt, tmp_path):
    s = Served(ckpt, *target_overrides(SLOW), "grace_period=60", log=tmp_path / "serve.log")
    try:
        assert len(model_workers(s.pids)) == 2 and len(s.pids) >= 4  # 2 model workers, an HTTP process, the manager
        out: dict = {}
        t = post_slow(s.url, out)
        time.sleep(DELAY)  # the request is with a worker
        os.kill(s.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # new connections are refused while the request in flight finishes
            urllib.request.urlopen(s.url + "/health", timeout=3)
        t.join(60)
        assert out.get("status") == 200 and out["body"]["method"] == "feature_ablation", out
        assert s.proc.wait(60) == 0
        assert wait_gone(s.pids) == [], [cmdline(p) for p in s.pids if pid_alive(p)]
        assert port_free(s.port)
        log = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in log and "fex-serve: stopped" in log
    finally:
        s.close()


def test_dead_worker_is_noticed_and_sigint_after_the_grace_period_answers_503(ckpt, tmp_path):
    s = Served(ckpt, *target_overrides(SLOW), "grace_period=1", log=tmp_path / "serve.log")
    try:
        workers = model_workers(s.pids)
        out: dict = {}
        t = post_slow(s.url, out)
        time.sleep(DELAY)
        for w in workers:  # kill -9 the model workers while one holds the request
            os.kill(w, signal.SIGKILL)
        t.join(30)
        assert out.get("status") == 503 and out["seconds"] < DELAY + 10, out  # at once, not after the timeout
        assert "worker" in out["body"]["detail"]
        seen, t0 = set(), time.time()  # not ready while the workers restart, then ready again
        while time.time() - t0 < 600 and (503 not in seen or s.health() != 200):
            seen.add(s.health())
            time.sleep(0.1)
        assert 503 in seen and s.health() == 200
        restarted = set(model_workers(descendants(s.proc.pid)))
        assert len(restarted) == 2 and not restarted & set(workers)
        s.pids = descendants(s.proc.pid)

        out = {}
        t = post_slow(s.url, out)  # answered by the restarted worker... unless the server stops first:
        time.sleep(DELAY)
        os.kill(s.proc.pid, signal.SIGINT)  # grace_period=1: the request in flight gets a 503
        t.join(60)
        assert out.get("status") == 503 and "shutting down" in out["body"]["detail"], out
        assert s.proc.wait(60) == 0
        assert wait_gone(s.pids) == []
        assert port_free(s.port)
    finally:
        s.close()


def test_a_second_signal_stops_at_once(ckpt, tmp_path):
    s = Served(ckpt, *target_overrides(SLOW), "grace_period=120", log=tmp_path / "serve.log")
    try:
        out: dict = {}
        post_slow(s.url, out)
        time.sleep(DELAY)
        os.kill(s.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        t0 = time.time()
        os.kill(s.proc.pid, signal.SIGTERM)
        assert s.proc.wait(30) == 128 + signal.SIGTERM and time.time() - t0 < 10
        assert wait_gone(s.pids) == []
        assert port_free(s.port)
    finally:
        s.close()


def run_serve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fex.serve", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)


@pytest.mark.parametrize("arg, message", [("port=abc", "port must be an integer, got 'abc'"),
                                          ("grace_period=-1", "grace_period must be at least 0"),
                                          ("host=example.org", "host must be one of")])
def test_bad_settings_end_in_one_line(ckpt, arg, message):
    res = run_serve(f"checkpoint={ckpt}", arg, *target_overrides(SLOW))
    assert res.returncode == 2 and res.stderr.strip() == f"error: {res.stderr.strip()[7:]}", res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_worker_side_checkpoint_error_ends_in_one_line_and_nothing_stays(ckpt, tmp_path):
    """The workers build the target: one that is not the checkpoint's fails there, not in the main process."""
    other = {"model": {"_target_": "tests.synth.LinearPatchTarget", "scale": 2.0}, "output": "logits"}
    proc = subprocess.Popen([sys.executable, "-m", "fex.serve", f"checkpoint={ckpt}", f"port={free_port()}", "threads=1",
                             *target_overrides(other)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1",
                                 "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.2)
    _, err = proc.communicate()
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: a model worker could not start:") and "target" in lines[0], err
    assert wait_gone(seen) == []
