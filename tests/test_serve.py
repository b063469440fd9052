"""The explanation server over real HTTP on 127.0.0.1: answers equal the in-process explainer's,
dynamic batching does not change them, bad requests get a 4xx with a one-line reason and the
server keeps serving, and the page works in a real headless Chromium."""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.serve_helpers import (IMAGE_TARGET, ROOT, TEXT_TARGET, Server, image_checkpoint, target_args,
                                 text_checkpoint)

pytest.importorskip("litserve")

MAX_BYTES = 300_000
MAX_INPUTS = 8


# --------------------------------------------------------------------------- helpers
def post(url: str, body, ctype: str = "application/json", timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, {"detail": raw.decode(errors="replace")}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def multipart(fields: dict[str, tuple[str, bytes, str] | str]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = []
    for name, v in fields.items():
        if isinstance(v, tuple):
            fname, data, ctype = v
            head = f'Content-Disposition: form-data; name="{name}"; filename="{fname}"\r\nContent-Type: {ctype}\r\n\r\n'
            parts.append(f"--{b}\r\n{head}".encode() + data + b"\r\n")
        else:
            parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode())
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((arr * 255).round().astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def image_ckpt(tmp_path_factory):
    return image_checkpoint(tmp_path_factory.mktemp("serve") / "image.ckpt")


@pytest.fixture(scope="module")
def image_server(image_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "image_server.log"
    with Server(image_ckpt, *target_args(IMAGE_TARGET), "max_batch_size=8", "batch_timeout=0.2", f"max_payload_bytes={MAX_BYTES}",
                f"max_inputs={MAX_INPUTS}", "gallery_max=8", "curve_steps=7", log=log) as s:
        yield s


@pytest.fixture(scope="module")
def local(image_ckpt):
    """The same explainer in this process: the known answer for what the server returns."""
    from fex.serve.loading import load_served_explainer

    return load_served_explainer(image_ckpt, IMAGE_TARGET, 2)


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


def expected(local, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xt = torch.from_numpy(x).float().reshape(-1, 1, 28, 28)
    probs = local.blackbox(xt)
    out = local.explain(xt, target=probs.argmax(-1))
    return out["scores"].numpy(), out["target"].numpy(), probs.numpy()


# --------------------------------------------------------------------------- image server
def test_explain_image_array_equals_in_process(image_server, local):
    x = digits(1)
    status, res = post(image_server.url + "/explain", {"image": x[0].tolist()})
    assert status == 200, res
    scores, target, probs = expected(local, x)
    assert res["class"] == int(target[0]) and res["method"] == "fex" and res["queries"] == 1
    assert res["probability"] == pytest.approx(float(probs[0, target[0]]), abs=1e-6)
    assert len(res["scores"]) == 49 and res["grid"] == [7, 7]
    np.testing.assert_allclose(res["scores"], scores[0], atol=2e-6)
    m = np.asarray(res["map"])
    assert m.shape == (28, 28)
    assert m[0, 0] == pytest.approx(res["scores"][0], abs=1e-6)  # top-left pixel lies in patch 0
    assert m[27, 27] == pytest.approx(res["scores"][48], abs=1e-6)
    assert res["verdict"] is None


def test_png_upload_multipart_and_raw(image_server, local):
    x = np.round(digits(1, seed=3) * 255) / 255  # exactly representable in 8-bit PNG
    png = png_bytes(x[0])
    scores, target, _ = expected(local, x.astype(np.float32))
    body, ctype = multipart({"image": ("digit.png", png, "image/png")})
    for status, res in (post(image_server.url + "/explain", body, ctype),
                        post(image_server.url + "/explain", png, "image/png")):
        assert status == 200, res
        assert res["class"] == int(target[0])
        np.testing.assert_allclose(res["scores"], scores[0], atol=2e-6)


def test_batched_request_and_dynamic_batching_match_single(image_server, local):
    x = digits(MAX_INPUTS, seed=5)
    scores, target, _ = expected(local, x)
    status, res = post(image_server.url + "/explain", {"images": x.tolist(), "map": False})
    assert status == 200, res
    got = res["explanations"]
    assert len(got) == MAX_INPUTS and all("map" not in r for r in got)
    np.testing.assert_allclose([r["scores"] for r in got], scores, atol=2e-6)
    assert [r["class"] for r in got] == target.tolist()
    buf = io.BytesIO()
    np.save(buf, x[:, None])  # the binary path: [N, 1, 28, 28] as .npy, options in the query string
    status, res = post(image_server.url + "/explain?map=false&target=0", buf.getvalue(), "application/x-npy")
    assert status == 200, res
    want0 = local.explain(torch.from_numpy(x[:, None]), target=torch.zeros(len(x), dtype=torch.long))["scores"]
    np.testing.assert_allclose([r["scores"] for r in res["explanations"]], want0.numpy(), atol=2e-6)
    assert {r["class"] for r in res["explanations"]} == {0}

    # concurrent single-image requests: LitServe groups them (batch_timeout=0.2 s); answers do not change
    results: list = [None] * MAX_INPUTS
    barrier = threading.Barrier(MAX_INPUTS)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = post(image_server.url + "/explain", {"image": x[i].tolist(), "map": False})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(MAX_INPUTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r[0] == 200 for r in results), results
    np.testing.assert_allclose([r[1]["scores"] for r in results], scores, atol=2e-6)
    assert max(r[1]["batch"] for r in results) > 1  # at least two requests shared a forward pass


def test_given_target_class(image_server, local):
    x = digits(1, seed=7)
    status, res = post(image_server.url + "/explain", {"image": x[0].tolist(), "target": 0})
    assert status == 200, res
    xt = torch.from_numpy(x).reshape(1, 1, 28, 28)
    want = local.explain(xt, target=torch.tensor([0]))["scores"][0].numpy()
    assert res["class"] == 0
    np.testing.assert_allclose(res["scores"], want, atol=2e-6)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _bad_requests():
    x = digits(1)[0]
    nan = x.copy()
    nan[3, 3] = float("nan")
    big = {"image": x.tolist(), "pad": "x" * (MAX_BYTES + 10)}
    return [
        ("wrong shape", {"image": np.zeros((27, 28)).tolist()}, "application/json", 422, "shape"),
        ("wrong channels", {"image": np.zeros((3, 28, 28)).tolist()}, "application/json", 422, "shape"),
        ("ragged array", {"image": [[1, 2], [3]]}, "application/json", 422, "array"),
        ("NaN pixels", {"image": nan.tolist()}, "application/json", 422, "NaN"),
        ("corrupt png upload", b"\x89PNG\r\n\x1a\nnot really a png", "image/png", 400, "corrupt"),
        ("corrupt base64 image", {"image": "data:image/png;base64,%%%"}, "application/json", 400, "base64"),
        ("text to an image explainer", {"text": "hello"}, "application/json", 422, "images"),
        ("empty body", b"", "application/json", 400, "empty"),
        ("not json", b"{not json", "application/json", 400, "JSON"),
        ("json array", [1, 2, 3], "application/json", 422, "object"),
        ("unsupported type", b"abc", "application/xml", 415, "content type"),
        ("corrupt npy", b"\x93NUMPY garbage", "application/x-npy", 400, "npy"),
        ("npy of wrong shape", _npy(np.zeros((2, 3, 28, 28), np.float32)), "application/x-npy", 422, "shape"),
        ("oversized payload", big, "application/json", 413, "limit"),
        ("too many images", {"images": [x.tolist()] * (MAX_INPUTS + 1)}, "application/json", 413, "limit"),
        ("target out of range", {"image": x.tolist(), "target": 5}, "application/json", 422, "range"),
        ("unknown method", {"image": x.tolist(), "method": "magic"}, "application/json", 422, "method"),
        ("multipart without image", multipart({"text": "x"}), None, 422, "image"),
    ]


@pytest.mark.parametrize("name,body,ctype,status,word", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_request_gets_4xx_with_one_line_reason(image_server, name, body, ctype, status, word):
    if ctype is None:
        body, ctype = body
    got, res = post(image_server.url + "/explain", body, ctype)
    assert got == status, (name, res)
    assert isinstance(res.get("detail"), str) and "\n" not in res["detail"] and word.lower() in res["detail"].lower()


def test_server_survives_bad_requests(image_server):
    """After all the bad requests above (and a gallery with a bad n) the server still answers."""
    assert post(image_server.url + "/gallery", {"n": 0})[0] == 422
    assert post(image_server.url + "/gallery", {"n": "all"})[0] == 422
    assert get(image_server.url + "/health") == (200, b"ok")
    status, res = post(image_server.url + "/explain", {"image": digits(1)[0].tolist()})
    assert status == 200 and len(res["scores"]) == 49
    assert image_server.proc.poll() is None


def test_card(image_server, image_ckpt):
    from fex.explainer import read_checkpoint

    status, raw = get(image_server.url + "/card")
    card = json.loads(raw)
    saved = read_checkpoint(image_ckpt)["fex"]["target"]
    assert card["target"]["weights_sha256"] == saved["weights_sha256"] and card["target"]["name"] == saved["name"]
    assert card["features"] == {"modality": "image", "masker": "PatchMasker", "unit": "patch", "grid": [7, 7], "count": 49,
                                "input_shape": [1, 28, 28], "removed_become": "zeros"}
    assert card["classes"] == 2 and card["training"]["queries"] == 0 and card["faithfulness"] is None
    assert card["class_names"] == ["0", "1"] and card["data"]["_target_"] == "fex.data.mnist.MNISTDataModule"
    assert card["serving"]["max_batch_size"] == 8


def test_per_instance_method_behind_the_endpoint(image_server, local):
    """method=feature_ablation: the same scores as running Captum's FeatureAblation here, and its
    queries counted (49 occlusions + the unoccluded input + 1 for the prediction)."""
    from fex.baselines import FeatureAblation

    x = digits(1, seed=11)
    status, res = post(image_server.url + "/explain", {"image": x[0].tolist(), "method": "feature_ablation"})
    assert status == 200, res
    xt = torch.from_numpy(x).reshape(1, 1, 28, 28)
    cls = int(local.blackbox(xt).argmax())
    want = FeatureAblation(local.blackbox, local.masker).attribute(xt, torch.tensor([cls]))[0].numpy()
    assert res["method"] == "feature_ablation" and res["class"] == cls and res["queries"] == 51
    np.testing.assert_allclose(res["scores"], want, atol=2e-6)


def test_compare_and_gallery(image_server):
    x = digits(1, seed=13)
    status, res = post(image_server.url + "/compare", {"image": x[0].tolist(), "method": "feature_ablation"})
    assert status == 200, res
    assert res["fex"]["queries"] == 1 and res["method"]["queries"] == 51
    for side in (res["fex"], res["method"]):
        assert side["time_ms"] > 0 and len(side["deletion"]) == 8 and len(side["insertion"]) == 8
        d = np.asarray(side["deletion"])
        assert side["deletion_auc"] == pytest.approx(float((d[:-1] + d[1:]).sum() / (2 * 7)), abs=1e-4)
    status, g = post(image_server.url + "/gallery", {"n": 3})
    assert status == 200, g
    assert g["split"] == "test" and len(g["items"]) == 3
    it = g["items"][0]
    assert np.asarray(it["image"]).shape == (28, 28) and np.asarray(it["map"]).shape == (28, 28)
    assert len(it["deletion"]) == 8 and it["deletion"][-1] == pytest.approx(g["items"][0]["deletion"][-1])
    assert 0 <= g["mean"]["deletion_auc"] <= 1 and len(g["mean_curves"]["insertion"]) == 8


# --------------------------------------------------------------------------- text server
@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.text_helpers import synthetic_sentences

    d = tmp_path_factory.mktemp("serve_text")
    rows = ["text,label"] + [f"{t},{int('great' in t.split())}"
                             for t in synthetic_sentences(40, seed=3, frac_planted=0.5)]
    (d / "reviews.csv").write_text("\n".join(rows) + "\n")
    ckpt = text_checkpoint(d / "text.ckpt", data_csv=str(d / "reviews.csv"))
    log = tmp_path_factory.mktemp("serve_log") / "text_server.log"
    with Server(ckpt, *target_args(TEXT_TARGET), "max_text_chars=500", "batch_timeout=0.001", log=log) as s:
        s.checkpoint = ckpt
        yield s


def test_text_endpoint(text_server):
    from fex.serve.loading import load_served_explainer

    local = load_served_explainer(text_server.checkpoint, TEXT_TARGET, 2)
    text = "the plot was great but the acting felt flat"
    status, res = post(text_server.url + "/explain", {"text": text})
    assert status == 200, res
    x = local.masker.encode([text])
    want = local.explain(x, target=local.blackbox(x).argmax(-1))["scores"][0].numpy()
    assert res["words"] == text.split() and res["class"] == 1 and res["truncated"] is False
    np.testing.assert_allclose(res["scores"], want, atol=2e-6)
    status, res = post(text_server.url + "/explain", "a great film".encode(), "text/plain")
    assert status == 200 and res["words"] == ["a", "great", "film"]
    status, res = post(text_server.url + "/explain", {"text": " ".join(["word"] * 60)})  # 62 tokens > max_length 32
    assert status == 200 and res["truncated"] is True and len(res["words"]) == 30


@pytest.mark.parametrize("body,status,word", [
    ({"text": ""}, 422, "empty"), ({"text": "   \n "}, 422, "empty"), ({"text": 5}, 422, "string"),
    ({"texts": ["fine", ""]}, 422, "empty"), ({"text": "x " * 300}, 413, "limit"),
    ({"image": [[0.0]]}, 422, "text"), ({"text": "ok", "target": [0, 1]}, 422, "entries")])
def test_text_bad_requests(text_server, body, status, word):
    got, res = post(text_server.url + "/explain", body)
    assert got == status, res
    assert word in res["detail"] and "\n" not in res["detail"]


def test_kernel_shap_finds_the_planted_word(text_server):
    """Behind the same endpoint, KernelShap(200) on a target that reads only 'great'/'good' puts
    'great' first: a known answer for the per-instance path."""
    status, res = post(text_server.url + "/explain", {"text": "the movie was great fun", "method": "kernel_shap"})
    assert status == 200, res
    assert res["words"][int(np.argmax(res["scores"]))] == "great" and res["queries"] == 201


def test_text_gallery(text_server):
    status, g = post(text_server.url + "/gallery", {"n": 4})
    assert status == 200, g
    assert len(g["items"]) == 4
    for it in g["items"]:
        assert it["words"] and len(it["scores"]) == len(it["words"]) and it["true_label"] in ("negative", "positive")
        assert len(it["deletion"]) == min(20, len(it["words"])) + 1


# --------------------------------------------------------------------------- the page in Chromium
ARTIFACTS = ROOT / "outputs" / "test-artifacts"


def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium / chromedriver not installed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              "--window-size=1200,1600"):
        opts.add_argument(a)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"fex-chromium-{uuid.uuid4().hex}"
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts), profile


def wait_for(drv, css: str, attr: str = "data-done", timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(lambda d: d.find_element("css selector", css).get_attribute(attr) == "1"
                                             or d.find_element("css selector", "#error").text)


def test_page_image_upload_compare_gallery(image_server, tmp_path):
    drv, profile = browser()
    try:
        drv.get(image_server.url + "/")
        wait_for(drv, "body", "data-ready")
        assert "49 patches" in drv.find_element("id", "card").text
        png = tmp_path / "digit.png"
        png.write_bytes(png_bytes(digits(1, seed=17)[0]))
        drv.find_element("id", "file").send_keys(str(png))
        drv.find_element("id", "explain-btn").click()
        wait_for(drv, "#result")
        assert drv.find_element("id", "error").text == ""
        result = drv.find_element("id", "result")
        assert "prediction" in result.text and "1 black-box query" in result.text
        assert len(result.find_elements("css selector", "canvas.heatmap")) == 1
        # a per-instance method on demand, side by side, with its time and queries
        drv.find_element("css selector", "#method option[value=feature_ablation]").click()
        drv.find_element("id", "compare-btn").click()
        wait_for(drv, "#compare")
        sides = drv.find_elements("css selector", "#compare .side")
        assert len(sides) == 2 and "FEX" in sides[0].text and "FeatureAblation" in sides[1].text
        assert "51 black-box queries" in sides[1].text and "deletion AUC" in sides[1].text
        # the test-split gallery with deletion/insertion curves
        drv.find_element("id", "gallery-btn").click()
        wait_for(drv, "#gallery")
        items = drv.find_elements("css selector", "#gallery .gitem")
        assert len(items) == 8 and len(drv.find_elements("css selector", "#gallery svg.curves polyline")) == 16
        assert "mean deletion AUC" in drv.find_element("id", "gallery-summary").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert drv.save_screenshot(str(ARTIFACTS / "serve_page_image.png"))
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_text(text_server):
    drv, profile = browser()
    try:
        drv.get(text_server.url + "/")
        wait_for(drv, "body", "data-ready")
        box = drv.find_element("id", "text")
        box.clear()
        box.send_keys("a great and moving film")
        drv.find_element("id", "explain-btn").click()
        wait_for(drv, "#result")
        words = drv.find_elements("css selector", "#result span.w")
        assert [w.text for w in words] == ["a", "great", "and", "moving", "film"]
        assert "prediction" in drv.find_element("id", "result").text
        drv.find_element("css selector", "#method option[value=kernel_shap]").click()
        drv.find_element("id", "compare-btn").click()
        wait_for(drv, "#compare")
        assert "201 black-box queries" in drv.find_element("id", "compare").text  # KernelShap(200) + prediction
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert drv.save_screenshot(str(ARTIFACTS / "serve_page_text.png"))
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_cli_refuses_missing_checkpoint(tmp_path):
    from fex.serve.cli import main

    assert main([f"checkpoint={tmp_path / 'nope.ckpt'}"]) == 2


def test_console_script_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fex-serve"] == "fex.serve.cli:main"
