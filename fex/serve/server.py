"""The HTTP server: LitServe with dynamic batching, a request gate in front, and a page.

Routes:
  POST /explain   explain images or texts (dynamically batched: ``max_batch_size``, ``batch_timeout``);
                  ``"method": "kernel_shap" | "feature_ablation"`` runs that per-instance method instead
  POST /compare   FEX and a per-instance method side by side on one input (time, queries, curves)
  POST /gallery   the first ``n`` test-split inputs with deletion/insertion curves
  GET  /card      the explainer's card          GET /health   200 "ok" once every worker is ready
  GET  /          the page                      GET /info     LitServe's server info

/explain and /compare are LitServe ``LitAPI`` s, each with its own inference worker process (spawned:
the API objects carry only the checkpoint path and settings; ``setup`` loads the model in the worker);
the request gate sends /gallery to the /compare worker.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from importlib import resources
from typing import Any

import litserve as ls
import torch
from starlette.responses import Response

from fex.checkpoint import CKPT_KEY, read_checkpoint
from fex.errors import FexError
from fex.serve.card import explainer_card
from fex.serve.engine import Engine, ItemError
from fex.serve.loading import load_gate, load_served_explainer, serving_configs
from fex.serve.parse import InputSpec, RequestGate

log = logging.getLogger("fex.serve")


def _json_response(item: Any) -> Response:
    """A result as ready JSON bytes (serialised in the worker: FastAPI's per-element encoder is far
    slower for long lists of floats), or an :class:`~fex.serve.engine.ItemError` as its 4xx/5xx."""
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

    def setup(self, device: str) -> None:
        threads = self.settings.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        st = self.settings
        ckpt = read_checkpoint(self.checkpoint)  # once per worker
        explainer = load_served_explainer(ckpt, st["target"], st.get("num_classes"),
                                          allow_target_mismatch=bool(st.get("allow_target_mismatch")))
        if device and str(device) != "cpu":
            explainer.to(device)
        cfg = {**ckpt[CKPT_KEY]["config"], "data": st.get("data")}
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


def build_server(cfg: Any) -> ls.LitServer:
    """conf/serve.yaml -> a LitServer (not started). Fails fast on a missing/corrupt checkpoint."""
    from fastapi.responses import HTMLResponse, JSONResponse

    path = os.path.abspath(os.path.expanduser(str(cfg.checkpoint)))
    ckpt = read_checkpoint(path)  # once, in this process; fail fast before starting workers
    config = ckpt[CKPT_KEY]["config"]
    spec = InputSpec.from_config(config, max_inputs=int(cfg.max_inputs), max_text_chars=int(cfg.max_text_chars))
    settings = settings_from(cfg, serving_configs(cfg, ckpt))
    serving = {"max_batch_size": int(cfg.max_batch_size), "batch_timeout_s": float(cfg.batch_timeout),
               "max_payload_bytes": int(cfg.max_payload_bytes), "max_inputs": int(cfg.max_inputs),
               "methods": list(spec.methods), "kernel_shap_samples": settings["kernel_shap_samples"],
               "gate": settings["gate"], "gate_calibration": os.path.isfile(path + ".gate.json")}
    card = explainer_card(ckpt, cfg.get("card_metrics"), serving)
    card["data"] = ({k: settings["data"].get(k) for k in ("_target_", "source", "test_size", "seed")
                     if k in settings["data"]} if settings["data"] else None)
    warnings.filterwarnings("ignore", message="The LitServer has both batch and unbatch")  # max_batch_size=1 is fine
    apis = [ExplainAPI(path, settings, "/explain", int(cfg.max_batch_size), float(cfg.batch_timeout)),
            InspectAPI(path, settings, "/compare")]
    request_gate = (RequestGate, {"spec": spec, "paths": {"/explain": "input", "/compare": "input", "/gallery": "gallery"},
                          "max_bytes": int(cfg.max_payload_bytes), "gallery_max": int(cfg.gallery_max)})
    server = ls.LitServer(apis, accelerator=str(cfg.accelerator), workers_per_device=int(cfg.workers),
                          timeout=float(cfg.timeout), middlewares=[request_gate], fast_queue=bool(cfg.fast_queue),
                          max_payload_size=int(cfg.max_payload_bytes),  # LitServer's limit, outside the gate
                          model_metadata={"explainer": path, "modality": spec.modality})
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
    server = build_server(cfg)
    print(f"fex-serve: http://{cfg.host}:{cfg.port}/ (explainer {cfg.checkpoint}; "
          f"batches of up to {cfg.max_batch_size}, {float(cfg.batch_timeout) * 1e3:g} ms timeout)", flush=True)
    server.run(host=str(cfg.host), port=int(cfg.port), num_api_servers=int(cfg.api_servers),
               log_level=str(cfg.log_level), generate_client_file=False)
