"""A multi-head policy (one backbone pass, H actor/critic heads, logits averaged): every head learns the
known answer on its own loss, the single-head policy is unchanged, bad combinations are refused."""
import pytest
import torch

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError
from fex.module import load_explainer
from fex.objective import FexObjective
from fex.policy import Policy
from fex.policy.text import BranchLayerNorm, TextEncoderBackbone
from helpers import fit, small_explainer, synthetic_images
from test_additive_known_answer import AdditivePatches, spearman


def _objective(**kw):
    return FexObjective(**{**dict(estimator="regression", sampler="antithetic", num_samples=16, temperature=0.05,
                                  reward="prob", attribution="logit", kl_weight=0.0, entropy_weight=0.0), **kw})


def test_every_head_learns_the_known_answer_and_the_mean_is_the_read_out(tmp_path):
    model = AdditivePatches()
    bb = BlackBox(model, output="probs", num_classes=2, name="tests.AdditivePatches")
    module = small_explainer(blackbox=bb, objective=_objective(), lr=3e-3, heads=3, seed=0)
    trainer = fit(module, synthetic_images(2048, seed=0), steps=300, default_root_dir=tmp_path)
    x = synthetic_images(200, seed=1)
    truth = model.patch_means(x) * model.w * 4 / 16
    with torch.no_grad():
        head_logits, _ = module.policy.forward_heads(x, module.masker)  # [3, B, F, C]
        logits, _ = module(x)
    assert head_logits.shape[0] == 3
    torch.testing.assert_close(logits, head_logits.mean(0))
    for h in range(3):  # each head fits the value itself (its own loss), not only their mean
        rho = spearman(0.05 * head_logits[h, :, :, 1], truth)
        assert rho.mean() >= 0.9, f"head {h}: mean Spearman {rho.mean():.3f}"
    assert (head_logits[0] - head_logits[1]).abs().max() > 1e-3  # independently initialised heads
    out = module.explain(x, target=1)
    assert spearman(out["scores"], truth).mean() >= 0.9
    assert (out["scores"] - truth).abs().mean() < 0.01
    path = tmp_path / "heads.ckpt"
    trainer.save_checkpoint(path)
    again = load_explainer(path, target=model)
    assert again.policy.heads == 3
    torch.testing.assert_close(again.explain(x, target=1)["scores"], out["scores"])


def test_single_head_keeps_its_parameter_names():
    module = small_explainer(seed=0)
    keys = set(module.policy.state_dict())
    assert {"actor.0.weight", "actor.4.bias", "critic.0.weight"} <= keys
    assert module.policy.heads == 1


def test_branch_layer_norm_is_a_layer_norm_per_block():
    torch.manual_seed(0)
    norm = BranchLayerNorm(3, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    h = torch.randn(2, 5, 12)
    out = norm(h)
    for b in range(3):
        ref = torch.nn.functional.layer_norm(h[..., 4 * b:4 * b + 4], (4,), norm.weight[4 * b:4 * b + 4],
                                             norm.bias[4 * b:4 * b + 4])
        torch.testing.assert_close(out[..., 4 * b:4 * b + 4], ref)


def test_text_backbone_branches_give_each_head_its_own_block():
    backbone = TextEncoderBackbone(num_layers=1, out_dim=8, branches=3)
    policy = Policy(backbone, num_classes=2, hidden=16, heads=3)
    x = {"input_ids": torch.tensor([[101, 2023, 2003, 102, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}
    tokens, pooled = backbone(x)
    assert tokens.shape == (1, 5, 24) and pooled.shape == (1, 24)
    feats = tokens[:, :3]  # three pooled "features"
    logits = policy.head_logits(feats)
    assert logits.shape == (3, 1, 3, 2)
    for h in range(3):  # head h reads only block h
        torch.testing.assert_close(logits[h], policy.actor[h](feats[..., 8 * h:8 * h + 8]))
    torch.testing.assert_close(policy.actor_logits(feats), logits.mean(0))
    # the frozen encoder is stored once, not per head
    assert not any(k.startswith("backbone.encoder.") for k in policy.state_dict())


def test_bad_head_configurations_are_refused():
    with pytest.raises(ConfigError, match="branches"):
        Policy(TextEncoderBackbone(num_layers=1, out_dim=8, branches=2), num_classes=2, heads=3)
    with pytest.raises((ConfigError, CheckpointError), match="heads must be >= 1"):  # built from config
        small_explainer(heads=0)
    with pytest.raises(ConfigError, match="estimator=regression or fastshap"):
        small_explainer(heads=2, objective=FexObjective(estimator="ppo"))


def _text_member(seed: int, tmp_path, **policy):
    from fex.explainer import build_explainer, save_explainer
    from text_helpers import planted_word_blackbox

    torch.manual_seed(seed)
    backbone = {"_target_": "fex.policy.text.TextEncoderBackbone", "out_dim": 16, "num_layers": 1,
                **policy.pop("backbone", {})}
    module = build_explainer({
        "masker": {"_target_": "fex.maskers.text.WordMasker", "max_length": 32},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16, "backbone": backbone, **policy},
        "objective": {"estimator": "regression", "attribution": "logit", "temperature": 0.5},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        "num_classes": 2, "val_auc_examples": 0}, blackbox=planted_word_blackbox())
    module._train_queries = 100 * (seed + 1)
    return save_explainer(module, tmp_path / f"member{seed}.ckpt"), module


def test_merged_explainer_scores_are_the_members_mean(tmp_path):
    from fex.explainer import merge_explainers
    from text_helpers import planted_word_blackbox

    a, ma = _text_member(0, tmp_path)
    b, mb = _text_member(1, tmp_path)
    c, mc = _text_member(2, tmp_path, heads=2, backbone={"branches": 2})  # a member with 2 heads of its own
    merged = merge_explainers([a, b, c], out=tmp_path / "merged.ckpt", target=planted_word_blackbox())
    assert merged.policy.heads == 4 and merged.policy.backbone.branches == 4
    assert merged._train_queries == 600  # the members' training cost, summed
    x = ma.masker.encode(["a great movie", "the plot was long and the acting flat but some scenes had charm"])
    cls = torch.tensor([1, 0])
    want = (ma.explain(x, target=cls)["scores"] + mb.explain(x, target=cls)["scores"]
            + 2 * mc.explain(x, target=cls)["scores"]) / 4  # c's read-out is already the mean of its 2 heads
    torch.testing.assert_close(merged.explain(x, target=cls)["scores"], want)
    again = load_explainer(tmp_path / "merged.ckpt", target=planted_word_blackbox())
    torch.testing.assert_close(again.explain(x, target=cls)["scores"], want)


def test_fex_merge_command(tmp_path, capsys):
    from fex.cli import merge_main

    a, _ = _text_member(0, tmp_path)
    b, _ = _text_member(1, tmp_path)
    assert merge_main([str(tmp_path / "m.ckpt"), a, b]) == 0
    assert "2 heads from 2 explainers" in capsys.readouterr().out
    assert load_explainer(tmp_path / "m.ckpt").policy.heads == 2
    assert merge_main([str(tmp_path / "n.ckpt"), a, str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "n.ckpt").exists()


def test_merge_refuses_what_cannot_share_a_pass(tmp_path):
    from fex.explainer import merge_explainers, save_explainer

    a, _ = _text_member(0, tmp_path)
    other, _ = _text_member(1, tmp_path, hidden=8)
    with pytest.raises(CheckpointError, match="policy configs differ"):
        merge_explainers([a, other])
    with pytest.raises(ConfigError, match="at least 2"):
        merge_explainers([a])
    tuned, _ = _text_member(2, tmp_path, backbone={"train_last_n_layers": 1})
    tuned2, m2 = _text_member(3, tmp_path, backbone={"train_last_n_layers": 1})
    merge_explainers([tuned, tuned2])  # fine-tuned layers, but still equal: they can share the pass
    with torch.no_grad():  # as if training had moved them
        next(q for q in m2.policy.backbone.encoder.parameters() if q.requires_grad).add_(0.01)
    tuned2 = save_explainer(m2, tmp_path / "tuned2.ckpt")
    with pytest.raises(ConfigError, match="outside their per-head parameters"):
        merge_explainers([tuned, tuned2])
    conv = [save_explainer(small_explainer(seed=s), tmp_path / f"conv{s}.ckpt") for s in (0, 1)]
    with pytest.raises(ConfigError, match="no per-head parameters"):
        merge_explainers(conv)
