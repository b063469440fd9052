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
    sequential = False

    def thresholds(self, x, target):
        return torch.full((len(target),), self.threshold)

    def check(self, scores, x, target, thresholds=None):
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
                                "queries": 7, "early": False, "target_changed": False}
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
# --------------------------------------------------------------------------- issue 21: strict requests
def parse(obj, spec=None, ctype: str = "application/json", query: str = ""):
    from fex.serve.parse import InputSpec, parse_body

    spec = spec or InputSpec("image", (1, 28, 28), 10)
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return asyncio.run(parse_body(data, ctype, spec, query=query))


IMG = np.zeros((28, 28)).tolist()


@pytest.mark.parametrize("obj, word", [
    ({"image": IMG, "target": "3"}, "integer class index"),
    ({"image": IMG, "target": True}, "integer class index"),
    ({"image": IMG, "target": 3.0}, "integer class index"),
    ({"images": [IMG, IMG], "target": [1]}, "1 entries for 2 inputs"),
    ({"images": [IMG, IMG], "target": [1, False]}, "integer class index"),
    ({"image": [[True] * 28] * 28}, "not a rectangular array of numbers"),
    ({"image": [[0.5] * 27 + [False]] * 28}, "not a rectangular array of numbers"),  # one bool among floats
    ({"image": [[None] * 28] * 28}, "not a rectangular array of numbers"),
    ({"image": IMG, "traget": 3}, "unknown field ['traget']"),
    ({"image": IMG, "mode": "fast", "x": 1}, "unknown fields ['mode', 'x']"),
])
def test_request_types_are_strict(obj, word):
    from fex.serve.parse import RequestError

    with pytest.raises(RequestError) as e:
        parse(obj)
    assert e.value.status == 422 and word in e.value.reason, e.value.reason


def test_strict_types_still_take_what_is_right():
    assert parse({"images": [IMG, IMG], "target": 3})["target"] == [3, 3]  # one class for every input
    assert parse({"images": [IMG, IMG], "target": [1, 2]})["target"] == [1, 2]
    assert parse({"image": [[1] * 28] * 28})["n"] == 1  # integer pixels are numbers
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="PNG")  # outside JSON, target is text: digits are read
    assert parse(buf.getvalue(), ctype="image/png", query="target=4")["target"] == [4]


def test_lone_surrogate_text_is_refused_in_the_gate():
    from fex.serve.parse import InputSpec, RequestError

    spec = InputSpec("text")
    raw = b'{"texts": ["a fine film", "a lovely \\ud800 film"]}'  # what a client's JSON may carry
    with pytest.raises(RequestError) as e:
        parse(raw, spec)
    assert e.value.status == 422 and "text 1 is not valid Unicode" in e.value.reason


def test_a_text_that_cannot_be_explained_fails_alone(tmp_path):
    """Past the gate (a request the gate let through, or a tokenizer that raises): the batch splits and only
    that request fails."""
    from fex.serve.engine import Engine, ItemError
    from fex.serve.loading import checkpoint_config, load_served_explainer
    from tests.serve_helpers import TEXT_TARGET, text_checkpoint

    ckpt = text_checkpoint(tmp_path / "text.ckpt")
    eng = Engine(load_served_explainer(ckpt, TEXT_TARGET, 2), checkpoint_config(ckpt))
    tb = lambda t: {"kind": "text", "n": 1, "texts": [t], "target": None, "method": "fex", "map": True}  # noqa: E731
    texts = [f"a great film number {i}" for i in range(23)]
    out = eng.explain_many([tb(t) for t in texts[:11]] + [tb("a lovely \ud800 film")] + [tb(t) for t in texts[11:]])
    assert isinstance(out[11], ItemError) and 400 <= out[11].status < 600
    good = [r for i, r in enumerate(out) if i != 11]
    assert all(isinstance(r, dict) and r["words"] for r in good)
    assert good[0]["scores"] == eng.explain_many([tb(texts[0])])[0]["scores"]


def test_huge_png_is_refused_from_its_header(tmp_path):
    """A 12000x12000 PNG (18 MB as 1-bit) is refused with 413 before it is decoded: the process's peak
    memory grows by far less than one decoded copy (144 MB as 8-bit gray)."""
    import subprocess
    import sys

    from PIL import Image

    from tests.serve_helpers import ROOT

    path = tmp_path / "huge.png"
    Image.new("1", (12000, 12000)).save(path, format="PNG")
    code = ("import resource, sys; from fex.serve.parse import RequestError, decode_image_bytes\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    decode_image_bytes(data, (1, 28, 28)); print('decoded')\n"
            "except RequestError as e:\n    print(e.status, e.reason)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    status, grown_mb = res.stdout.strip().splitlines()
    assert status.startswith("413 image of 12000x12000 pixels is larger than the limit"), res.stdout + res.stderr
    assert int(grown_mb) < 50


def test_openapi_info_and_card_show_no_directories(tmp_path):
    """GET /openapi.json is FastAPI's schema of the routes (it failed on the page's routes); /info and the
    card name the checkpoint's file, not where it lives."""
    from fex.serve.cli import compose_serve
    from fex.serve.server import build_server
    from tests.serve_helpers import target_args

    ckpt = image_checkpoint(tmp_path / "secret-dir" / "image.ckpt")
    server = build_server(compose_serve([f"checkpoint={ckpt}", *target_args(IMAGE_TARGET)]))
    schema = server.app.openapi()
    assert {"/explain", "/compare", "/card", "/health"} <= set(schema["paths"])
    assert server.model_metadata["explainer"] == "image.ckpt"
    card = next(r for r in server.app.router.routes if getattr(r, "path", None) == "/card")
    body = asyncio.run(card.endpoint()).body.decode()
    assert "secret-dir" not in body and json.loads(body)["checkpoint"] == "image.ckpt"
