"""The HTTP server: LitServe with dynamic batching, a request gate in front, and a page.

Routes:
  POST /explain   explain images or texts (dynamically batched: ``max_batch_size``, ``batch_timeout``);
                  ``"method": "kernel_shap" | "feature_ablation"`` runs that per-instance method instead
  POST /compare   FEX and a per-instance method side by side on one input (time, queries, curves)
  POST /gallery   the first ``n`` test-split inputs with deletion/insertion curves
  GET  /card      the explainer's card          GET /health   200 "ok" once every worker is ready
  GET  /          the page                      GET /info     LitServe's server info (no file paths)
  GET  /docs, /openapi.json                     FastAPI's API description

/explain and /compare are LitServe ``LitAPI`` s, each with its own inference worker process (spawned:
the API objects carry only the checkpoint path and settings; ``setup`` loads the model in the worker);
the request gate sends /gallery to the /compare worker.

Stopping and failing (:class:`FexServer`, LitServe's ``LitServer`` with its own hooks):

* SIGTERM or SIGINT to the main process: the port stops taking connections at once, requests in
  flight get ``grace_period`` seconds to finish and then a 503; the HTTP processes, the model workers
  and LitServe's manager process exit, the port is free, exit status 0. A second signal stops
  everything at once (SIGKILL to every child; exit status 128 + the signal).
* Model workers ignore SIGTERM/SIGINT sent to the whole process group (systemd, Ctrl+C): the main
  process stops them after the drain. The HTTP processes and model workers die with the main process,
  even after its kill -9 (Linux ``PR_SET_PDEATHSIG``); LitServe's manager process does not.
* A model worker that dies is restarted (LitServe's ``restart_workers``); ``/health`` answers 503
  until it is ready again, and the requests it held get a 503 at once instead of waiting forever.
* A model worker that cannot start (a checkpoint that does not load, say) ends ``fex-serve`` with its
  one-line reason; so does an HTTP process that dies.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import warnings
from importlib import resources
from typing import Any

import litserve as ls
from fastapi import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from litserve.utils import LitAPIStatus, WorkerSetupStatus, dump_exception
from starlette.responses import Response

from fex.errors import ConfigError, FexError
from fex.serve.card import explainer_card
from fex.serve.parse import InputSpec, RequestGate

log = logging.getLogger("fex.serve")


# --------------------------------------------------------------------------- processes
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent_pid: int | None) -> None:
    """This process gets SIGKILL when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``): it does
    not outlive ``fex-serve``, even after a kill -9 of the main process. Elsewhere: nothing.
    (A worker LitServe's monitor restarted dies with the monitor's thread: stop that thread last.)"""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def worker_process_setup(server_pid: int | None) -> None:
    """In a model worker: signals to the process group (Ctrl+C, systemd) are the main process's to handle
    (it drains requests, then stops the workers); die with the main process; LitServe's worker id becomes
    the pid, so the HTTP processes can tell which requests a dead worker held (:meth:`FexServer.lifespan`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with(server_pid)
    os.environ["LITSERVE_WORKER_ID"] = str(os.getpid())


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class FexServer(ls.LitServer):
    """LitServe's server with a clean stop on SIGTERM/SIGINT and requests that never wait on a dead
    worker (see the module docstring). Built on LitServe's own hooks: ``restart_workers`` and its
    worker monitor, ``uvicorn_graceful_timeout``, ``lifespan``, ``verify_worker_status`` and
    ``_perform_graceful_shutdown`` (called by ``run`` when it stops)."""

    def __init__(self, lit_api: Any, grace_period: float = 30.0, **kwargs: Any) -> None:
        super().__init__(lit_api, restart_workers=True, **kwargs)
        self.uvicorn_graceful_timeout = float(grace_period)  # in-flight requests' time to finish after a stop
        self.monitor_internal = 0.5  # LitServe's worker monitor polls every 0.5 s (its default: 2 s)
        self.main_pid = os.getpid()
        self.stop_requested = False
        self.failure: str | None = None
        self._signals = 0
        self._stop_lock = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._sockets: list = []
        self._uvicorn: dict = {}
        self.setup_errors = mp.get_context("spawn").Queue()  # one line per model worker that could not start
        for api in self.litapi_connector:
            api.setup_errors, api.server_pid = self.setup_errors, self.main_pid

    # ------------------------------------------------------------------ signals (main process)
    def on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT in the main process: the first stops in order (LitServe's ``run`` leaves its wait
        through the KeyboardInterrupt it expects, then shuts down), the second at once."""
        if os.getpid() != self.main_pid:
            return  # a forked helper (LitServe's manager) that inherited this handler: the main process stops it
        self._signals += 1
        if self._signals > 1:
            self.kill_children()
            os._exit(128 + signum)
        print(f"fex-serve: {signal.Signals(signum).name}: finishing requests in flight (up to "
              f"{self.uvicorn_graceful_timeout:g} s), then stopping; send it again to stop at once", file=sys.stderr, flush=True)
        self.stop_requested = True
        if not self._stopping:
            raise KeyboardInterrupt

    def stop(self, failure: str) -> None:
        """Stop because something broke (from a watching thread): ``run`` returns from its wait and shuts down."""
        if self.failure is None:
            self.failure = failure
        self.stop_requested = True
        with contextlib.suppress(Exception):
            if self._shutdown_event is not None:
                self._shutdown_event.set()

    def _set_shutdown_event(self) -> None:
        with contextlib.suppress(Exception):
            self._shutdown_event.set()

    def kill_children(self) -> None:
        """SIGKILL every child process still running (HTTP processes, model workers, the manager)."""
        for p in mp.active_children():
            with contextlib.suppress(Exception):
                p.kill()
        for p in mp.active_children():
            with contextlib.suppress(Exception):
                p.join(5)

    # ------------------------------------------------------------------ LitServe's hooks
    def verify_worker_status(self) -> None:
        """Wait until every model worker is ready; a worker that could not start ends the server with its reason."""
        while True:
            status = dict(self.workers_setup_status)
            if any(v == WorkerSetupStatus.ERROR for v in status.values()):
                try:
                    reason = self.setup_errors.get(timeout=5)
                except queue.Empty:
                    reason = "see the log above"
                raise FexError(f"a model worker could not start: {reason}")
            if status and all(v == WorkerSetupStatus.READY for v in status.values()):
                return
            dead = [w for w in self.inference_workers if w.exitcode is not None]
            if dead:
                raise FexError(f"a model worker exited while starting (exit code {dead[0].exitcode}); see the log above")
            time.sleep(0.05)

    def launch_single_inference_worker(self, lit_api: Any, worker_id: int) -> Any:
        """LitServe's monitor restarts a dead worker here; not while stopping, and not one whose setup failed."""
        endpoint = lit_api.api_path.split("/")[-1]
        with self._stop_lock:
            if self._stopping:
                return mp.get_context("spawn").Process(target=int)  # never started: not alive, nothing to stop
            if self.workers_setup_status.get(f"{endpoint}_{worker_id}") == WorkerSetupStatus.ERROR:
                try:
                    reason = self.setup_errors.get(timeout=1)
                except queue.Empty:
                    reason = "see the log above"
                self.stop(f"a model worker could not start again: {reason}")
                return mp.get_context("spawn").Process(target=int)
            log.warning("fex-serve: a model worker of %s died; restarting it", lit_api.api_path)
            return super().launch_single_inference_worker(lit_api, worker_id)

    def _start_server(self, port: Any, num_uvicorn_servers: int, log_level: str, sockets: list, *args: Any,
                      **kwargs: Any) -> dict:
        self._sockets = list(sockets)  # this process's copy of the listening socket: closed first when stopping
        self._uvicorn = super()._start_server(port, num_uvicorn_servers, log_level, sockets, *args, **kwargs)
        threading.Thread(target=self._watch_http_processes, daemon=True, name="fex-serve-http-watch").start()
        return self._uvicorn

    def _watch_http_processes(self) -> None:
        while not self._stopping:
            for w in list(self._uvicorn.values()):
                if isinstance(w, mp.process.BaseProcess) and w.exitcode is not None and not self._stopping:
                    self.stop(f"an HTTP server process exited (exit code {w.exitcode})")
                    return
            time.sleep(0.5)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any):
        """In each HTTP process: die with the main process, and answer 503 at once for a request held by a
        model worker that died (LitServe would wait for it forever)."""
        if os.getpid() != self.main_pid:  # an HTTP process (not threads of the main process)
            die_with(self.main_pid)
        watch = asyncio.get_running_loop().create_task(self._fail_requests_of_dead_workers())
        try:
            async with super().lifespan(app):
                yield
        finally:
            watch.cancel()

    async def _fail_requests_of_dead_workers(self) -> None:
        gone = dump_exception(HTTPException(503, "the model worker explaining this request stopped; send it again"))
        while True:
            await asyncio.sleep(0.25)
            for item in list(self.response_buffer.values()):
                pid = item.worker_id  # the worker's pid (worker_process_setup), sent when it takes the request
                if pid is not None and not item.event.is_set() and not pid_alive(int(pid)):
                    item.response = (gone, LitAPIStatus.ERROR)
                    item.event.set()

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict, shutdown_reason: str = "normal") -> None:
        """Stop in order: refuse new connections, let the HTTP processes drain (``grace_period``, then
        503), stop the model workers, then LitServe's manager. Once, whoever calls it."""
        with self._stop_lock:
            first = not self._stopping
            self._stopping = True
        if not first:
            self._stopped.wait()
            return
        try:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            procs = [w for w in uvicorn_workers.values() if isinstance(w, mp.process.BaseProcess)]
            for w in procs:
                if w.is_alive():
                    w.terminate()  # uvicorn: stop accepting, drain for uvicorn_graceful_timeout, then cancel
            for w in procs:
                w.join(self.uvicorn_graceful_timeout + 10)
                if w.is_alive():
                    w.kill()
                    w.join(5)
            # only now: LitServe's monitor ends its loop (a worker it restarted dies with its thread). On a
            # thread of its own: the main thread's connection to the manager may still wait on the event.
            setter = threading.Thread(target=self._set_shutdown_event, daemon=True)
            setter.start()
            setter.join(5)
            for t in threading.enumerate():
                if t.name == "litserve-monitoring" and t is not threading.current_thread():
                    t.join(5)
            for w in self.inference_workers:  # idle now; they ignore SIGTERM (see worker_process_setup)
                if w.pid is not None and w.is_alive():
                    w.kill()
                    w.join(5)
            with contextlib.suppress(Exception):
                self._transport.close(send_sentinel=False)
            with contextlib.suppress(Exception):
                manager.shutdown()
        finally:
            self._stopped.set()


def _json_response(item: Any) -> Response:
    """A result as ready JSON bytes (serialised in the worker: FastAPI's per-element encoder is far
    slower for long lists of floats), or an :class:`~fex.serve.engine.ItemError` as its 4xx/5xx."""
    from fex.serve.engine import ItemError

    if isinstance(item, ItemError):
        return Response(json.dumps({"detail": item.reason}), status_code=item.status, media_type="application/json")
    return Response(json.dumps(item, separators=(",", ":")), media_type="application/json")


class _EngineAPI(ls.LitAPI):
    """Shared setup: load the explainer (+ black box) in the worker process."""

    def __init__(self, checkpoint: str, settings: dict, api_path: str, max_batch_size: int = 1,
                 batch_timeout: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path)
        self.checkpoint = checkpoint
        self.settings = dict(settings)

    # set by FexServer before its workers start: where a worker reports why it could not start, the main pid
    setup_errors: Any = None
    server_pid: int | None = None

    def setup(self, device: str) -> None:
        worker_process_setup(self.server_pid)
        try:
            self._load(device)
        except Exception as exc:
            line = (str(exc).splitlines() or [type(exc).__name__])[0]
            if self.setup_errors is not None:
                self.setup_errors.put(line if isinstance(exc, FexError) else f"{type(exc).__name__}: {line}")
            if isinstance(exc, FexError):  # a bad checkpoint or config: its one line is the whole story
                logging.getLogger("litserve.loops.loops").disabled = True
            raise

    def _load(self, device: str) -> None:
        import torch

        import fex  # noqa: F401  (compat shims before anything imports lightning)
        from fex.serve.engine import Engine
        from fex.serve.loading import checkpoint_config, load_gate, load_served_explainer

        threads = self.settings.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        st = self.settings
        explainer = load_served_explainer(self.checkpoint, st["target"], st.get("num_classes"),
                                          allow_target_mismatch=bool(st.get("allow_target_mismatch")))
        if device and str(device) != "cpu":
            explainer.to(device)
        cfg = {**checkpoint_config(self.checkpoint), "data": st.get("data")}
        self.engine = Engine(explainer, cfg, kernel_shap_samples=st.get("kernel_shap_samples", 200),
                             curve_steps=st.get("curve_steps", 20),
                             class_names=st.get("class_names") or list(explainer.class_names),
                             gate=load_gate(self.checkpoint, explainer, st.get("gate", "auto")))

    def decode_request(self, request: dict) -> dict:
        return request

    def encode_response(self, output: Any) -> Response:
        return _json_response(output)


class ExplainAPI(_EngineAPI):
    """POST /explain: dynamically batched; one policy pass per batch for FEX requests."""

    def batch(self, inputs: list) -> list:
        return list(inputs)

    def predict(self, x: Any) -> Any:
        if isinstance(x, list):
            return self.engine.explain_many(x)
        return self.engine.explain_many([x])[0]

    def unbatch(self, output: list) -> list:
        return list(output)


class InspectAPI(_EngineAPI):
    """POST /compare (FEX next to a per-instance method on one input) and POST /gallery (the request
    gate routes it here with ``op: gallery``): the slow, unbatched path, in its own worker."""

    def predict(self, x: dict) -> Any:
        from fex.errors import FexError
        from fex.serve.engine import ItemError

        if x.get("op") == "gallery":
            try:
                return self.engine.gallery(int(x["n"]))
            except FexError as exc:
                return ItemError(404, str(exc))
        return self.engine.compare(x)


def settings_from(cfg: Any, resolved: dict) -> dict:
    """What the model workers need (plain, picklable): resolved target/data configs and the knobs."""
    return {"threads": cfg.get("threads"), "kernel_shap_samples": int(cfg.kernel_shap_samples),
            "curve_steps": int(cfg.curve_steps), "allow_target_mismatch": bool(cfg.allow_target_mismatch),
            "class_names": list(cfg.class_names) if cfg.get("class_names") else None, "gate": cfg.get("gate", "auto"),
            **resolved}


def page_html() -> str:
    return resources.files("fex.serve").joinpath("static/index.html").read_text(encoding="utf-8")


HOSTS = ("0.0.0.0", "127.0.0.1", "::")  # what LitServe binds


def _setting(cfg: Any, key: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
    """``cfg[key]`` as ``kind`` within [low, high], or a one-line :class:`ConfigError`."""
    value = cfg.get(key)
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if (low is not None and out < low) or (high is not None and out > high):
        rng = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{key} must be {rng}, got {value!r}")
    return out


def serve_settings(cfg: Any) -> dict:
    """The server's knobs from conf/serve.yaml, checked before anything starts (one line each when wrong)."""
    host = str(cfg.get("host"))
    if host not in HOSTS:
        raise ConfigError(f"host must be one of {list(HOSTS)}, got {host!r}")
    return {"host": host, "port": _setting(cfg, "port", int, 1024, 65535),
            "max_batch_size": _setting(cfg, "max_batch_size", int, 1), "batch_timeout": _setting(cfg, "batch_timeout", float, 0),
            "workers": _setting(cfg, "workers", int, 1), "api_servers": _setting(cfg, "api_servers", int, 1),
            "timeout": _setting(cfg, "timeout", float, 0), "grace_period": _setting(cfg, "grace_period", float, 0),
            "max_payload_bytes": _setting(cfg, "max_payload_bytes", int, 1), "max_inputs": _setting(cfg, "max_inputs", int, 1),
            "max_text_chars": _setting(cfg, "max_text_chars", int, 1), "gallery_max": _setting(cfg, "gallery_max", int, 1),
            "max_image_pixels": _setting(cfg, "max_image_pixels", int, 1),
            "kernel_shap_samples": _setting(cfg, "kernel_shap_samples", int, 1),
            "curve_steps": _setting(cfg, "curve_steps", int, 1)}


def build_server(cfg: Any) -> FexServer:
    """conf/serve.yaml -> a server (not started). Fails fast on a missing/corrupt checkpoint or a bad setting."""
    from fex.explainer import CKPT_KEY, read_checkpoint
    from fex.serve.loading import serving_configs

    knobs = serve_settings(cfg)
    path = os.path.abspath(os.path.expanduser(str(cfg.checkpoint)))
    ckpt = read_checkpoint(path)  # once, in this process; fail fast before starting workers
    config = ckpt[CKPT_KEY]["config"]
    spec = InputSpec.from_config(config, max_inputs=knobs["max_inputs"], max_text_chars=knobs["max_text_chars"],
                                 max_image_pixels=knobs["max_image_pixels"])
    settings = settings_from(cfg, serving_configs(cfg, ckpt))
    serving = {"max_batch_size": knobs["max_batch_size"], "batch_timeout_s": knobs["batch_timeout"],
               "max_payload_bytes": knobs["max_payload_bytes"], "max_inputs": knobs["max_inputs"],
               "methods": list(spec.methods), "kernel_shap_samples": settings["kernel_shap_samples"],
               "gate": settings["gate"], "gate_calibration": os.path.isfile(path + ".gate.json")}
    card = explainer_card(ckpt, cfg.get("card_metrics"), serving)
    card["checkpoint"] = os.path.basename(path)  # a client learns the file's name, not the server's directories
    if card.get("faithfulness"):
        card["faithfulness"]["source"] = os.path.basename(card["faithfulness"]["source"])
    card["data"] = ({k: settings["data"].get(k) for k in ("_target_", "source", "test_size", "seed")
                     if k in settings["data"]} if settings["data"] else None)
    warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")  # max_batch_size=1 is fine
    apis = [ExplainAPI(path, settings, "/explain", knobs["max_batch_size"], knobs["batch_timeout"]),
            InspectAPI(path, settings, "/compare")]
    request_gate = (RequestGate, {"spec": spec, "paths": {"/explain": "input", "/compare": "input", "/gallery": "gallery"},
                          "max_bytes": knobs["max_payload_bytes"], "gallery_max": knobs["gallery_max"]})
    server = FexServer(apis, grace_period=knobs["grace_period"], accelerator=str(cfg.accelerator),
                       workers_per_device=knobs["workers"], timeout=knobs["timeout"], middlewares=[request_gate],
                       fast_queue=bool(cfg.fast_queue),
                       model_metadata={"explainer": os.path.basename(path), "modality": spec.modality})
    html = page_html()

    @server.app.get("/card")
    async def card_route() -> JSONResponse:
        return JSONResponse(card)

    # the page replaces LitServe's own "litserve running" index
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]

    @server.app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(html)

    return server


def serve(cfg: Any) -> None:
    """Run the server until SIGTERM/SIGINT (then return: exit status 0) or a failure (:class:`FexError`)."""
    knobs = serve_settings(cfg)
    server = build_server(cfg)
    print(f"fex-serve: http://{knobs['host']}:{knobs['port']}/ (explainer {cfg.checkpoint}; "
          f"batches of up to {knobs['max_batch_size']}, {knobs['batch_timeout'] * 1e3:g} ms timeout)", flush=True)
    previous = {s: signal.signal(s, server.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(host=knobs["host"], port=knobs["port"], num_api_servers=knobs["api_servers"],
                   log_level=str(cfg.log_level), generate_client_file=False)
    except (KeyboardInterrupt, Exception):
        if not server.stop_requested:  # a signal before the server was up (or while it fails): stop quietly
            raise
    finally:
        server.kill_children()  # whatever a failed start left: no orphan keeps the port or a model in memory
        for s, h in previous.items():
            signal.signal(s, h)
    if server.failure:
        raise FexError(server.failure)
    print("fex-serve: stopped", file=sys.stderr, flush=True)
