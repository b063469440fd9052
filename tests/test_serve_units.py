"""Serving pieces in-process (no HTTP): the engine's batching invariance and per-request errors,
the trust-gate hook, the request parser, and the card's faithfulness from an evaluation."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import torch

from tests.serve_helpers import IMAGE_TARGET, image_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from fex.serve.engine import Engine
    from fex.serve.loading import checkpoint_config, load_served_explainer

    ckpt = image_checkpoint(tmp_path_factory.mktemp("units") / "image.ckpt")
    return Engine(load_served_explainer(ckpt, IMAGE_TARGET, 2), checkpoint_config(ckpt), curve_steps=7)


def body(x: np.ndarray, **kw) -> dict:
    x = x.reshape(-1, 1, 28, 28).astype(np.float32)
    return {"kind": "image", "n": len(x), "shape": [1, 28, 28], "pixels": base64.b64encode(x.tobytes()).decode(),
            "target": None, "method": "fex", "map": True, **kw}


def test_engine_batch_of_requests_equals_one_by_one(engine):
    x = np.random.default_rng(0).random((5, 28, 28), dtype=np.float32)
    together = engine.explain_many([body(x[:2]), body(x[2:3]), body(x[3:], target=[0, 0])])
    alone = [engine.explain_many([body(x[i:i + 1], target=None if i < 3 else [0])])[0] for i in range(5)]
    flat = together[0]["explanations"] + [together[1]] + together[2]["explanations"]
    assert [r["batch"] for r in flat] == [5] * 5 and [r["batch"] for r in alone] == [1] * 5
    for a, b in zip(flat, alone):
        assert a["class"] == b["class"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
    assert flat[3]["class"] == 0 and flat[4]["class"] == 0


def test_engine_failure_is_per_request(engine):
    from fex.serve.engine import ItemError

    x = np.random.default_rng(1).random((2, 28, 28), dtype=np.float32)
    bad = body(x[:1], method="no_such_method")
    out = engine.explain_many([body(x[:1]), bad, body(x[1:])])
    assert isinstance(out[1], ItemError) and out[1].status == 422 and "no_such_method" in out[1].reason
    assert out[0]["scores"] and out[2]["scores"]


class StubGate:
    """Passes an explanation iff its top feature's score is >= 0.5 (a stand-in for fex.gate.Gate)."""

    threshold = 0.5

    def check(self, scores, x, target):
        b = scores.shape[0]
        return {"statistic": scores.max(1).values, "queries": torch.full((b,), 7)}


def test_gate_verdicts_are_attached(engine):
    x = np.random.default_rng(2).random((3, 28, 28), dtype=np.float32)
    engine.gate = StubGate()
    try:
        res = engine.explain_many([body(x)])[0]["explanations"]
    finally:
        engine.gate = None
    for r in res:
        top = max(r["scores"])
        assert r["verdict"] == {"passed": top >= 0.5, "statistic": pytest.approx(top, abs=1e-5), "threshold": 0.5,
                                "queries": 7}
    assert engine.explain_many([body(x[:1])])[0]["verdict"] is None


def test_load_gate_modes(engine, tmp_path):
    from fex.errors import ConfigError
    from fex.serve.loading import load_gate

    assert load_gate(tmp_path / "x.ckpt", engine.explainer, "off") is None
    assert load_gate(tmp_path / "x.ckpt", engine.explainer, False) is None
    with pytest.raises(ConfigError):
        load_gate(tmp_path / "x.ckpt", engine.explainer, "sometimes")
    try:
        import fex.gate  # noqa: F401
    except ImportError:
        assert load_gate(tmp_path / "x.ckpt", engine.explainer, "auto") is None  # no gate in this fex: no verdicts
        with pytest.raises(ConfigError):
            load_gate(tmp_path / "x.ckpt", engine.explainer, "on")


def test_parse_png_is_resized_and_scaled():
    from PIL import Image

    from fex.serve.parse import InputSpec, decode_image_bytes, parse_body

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (255, 255, 255)).save(buf, format="JPEG")
    arr = decode_image_bytes(buf.getvalue(), (1, 28, 28))
    assert arr.shape == (1, 28, 28) and arr.dtype == np.float32 and np.allclose(arr, 1.0, atol=2 / 255)
    spec = InputSpec("image", (1, 28, 28), 10)
    canon = asyncio.run(parse_body(json.dumps({"image": np.zeros((28, 28)).tolist(), "target": 3}).encode(),
                                   "application/json; charset=utf-8", spec))
    assert canon["target"] == [3] and canon["n"] == 1 and canon["method"] == "fex"


def test_card_reads_faithfulness_from_evaluation(tmp_path):
    from fex.serve.card import explainer_card

    ckpt = image_checkpoint(tmp_path / "e.ckpt")
    metrics = {"split": "test", "methods": [
        {"method": "fex", "deletion_auc": 0.24, "insertion_auc": 0.83, "sec_per_expl": 0.0005, "queries_per_expl": 0},
        {"method": "kernel_shap", "deletion_auc": 0.13, "insertion_auc": 0.85},
        {"method": "lime", "error": "boom"}]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = explainer_card(ckpt)  # metrics.json beside the checkpoint is found
    assert card["faithfulness"]["fex"] == {"deletion_auc": 0.24, "insertion_auc": 0.83, "sec_per_expl": 0.0005,
                                           "queries_per_expl": 0}
    assert card["faithfulness"]["kernel_shap"]["deletion_auc"] == 0.13
    assert card["features"]["count"] == 49 and card["policy"]["stored_parameters"] > 0


def test_gallery_needs_data(engine):
    from fex.errors import FexError
    from fex.serve.engine import Engine

    bare = Engine(engine.explainer, {**engine.config, "data": None})
    with pytest.raises(FexError, match="no data config"):
        bare.gallery(2)


def test_payload_limit_is_litservers_and_answered_as_a_one_line_413():
    """A body without Content-Length that grows past the limit is stopped by LitServer's MaxSizeMiddleware
    (how build_server sets max_payload_size) and answered by the request gate: 413, one line, no worker."""
    from litserve.middlewares import MaxSizeMiddleware

    from fex.serve.parse import InputSpec, RequestGate

    async def model(scope, receive, send):
        raise AssertionError("an oversized request reached the model")

    app = MaxSizeMiddleware(RequestGate(model, InputSpec("text", None, 2), {"/explain": "input"}, max_bytes=100),
                            max_size=100)
    body = [{"type": "http.request", "body": b'{"text": "' + b"x" * 60, "more_body": True},
            {"type": "http.request", "body": b"x" * 60 + b'"}', "more_body": False}]
    sent = []

    async def receive():
        return body.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/explain", "headers": []}, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "payload larger than the limit of 100 bytes"}
