"""The text preset through the real train task (shrunk), checkpoints, and the policy backbones."""
from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from tests.conftest import FAST, compose

TEXT_FAST = ["experiment=text_rt", "target=text_callable", "target.model.path=tests.text_helpers.planted_great",
             "target.output=probs", "trainer.val_check_interval=1.0", "data.batch_size=16"]


@pytest.mark.parametrize("policy", ["text_encoder", "text_small", "word_embedding"])
def test_text_preset_trains_saves_and_reloads(tmp_path, policy):
    from fex.module import ExplainerModule
    from fex.tasks.train import train

    cfg = compose("train", TEXT_FAST + FAST + [f"policy={policy}"], output_dir=tmp_path)
    metrics, objects = train(cfg)
    ckpt = metrics["checkpoint"]
    assert os.path.isfile(ckpt)
    if policy.startswith("text_"):  # the frozen MiniLM is reloaded from its path, not stored
        assert os.path.getsize(ckpt) < 5 * 2**20
    dm, bb = objects["datamodule"], objects["blackbox"]
    x = next(iter(dm.test_dataloader()))[0]
    before = objects["module"].explain(x, target=1)["scores"]
    again = ExplainerModule.from_checkpoint(ckpt, target=bb).explain(x, target=1)["scores"]
    torch.testing.assert_close(before, again)
    valid = objects["module"].masker.valid(x)
    assert (again[~valid] == 0).all() and (again[valid] != 0).float().mean() > 0.9  # padding words score 0


def test_every_text_option_composes(tmp_path):
    from hydra.utils import instantiate

    for over in (["masker.mode=drop"], ["policy=word_embedding"], ["target=hf_classifier", "target.model.path=x"]):
        cfg = compose("train", ["experiment=text_rt"] + over, output_dir=tmp_path)
        assert cfg.num_classes == 2 and cfg.policy.num_classes == 2
        instantiate(cfg.masker)
    cfg = compose("evaluate", ["data=rotten_tomatoes", "target=minilm_sentiment", "checkpoint=x",
                               "method=[fex,kernel_shap,lime,feature_ablation,integrated_gradients_words]"],
                  output_dir=tmp_path)
    assert cfg.method.integrated_gradients._target_ == "fex.methods.text_ig.WordIntegratedGradients"


def test_frozen_encoder_state_dict_and_partial_finetune():
    from fex.policy.text import TextEncoderBackbone

    frozen = TextEncoderBackbone(freeze=True, out_dim=32)
    keys = frozen.state_dict().keys()
    assert not any(k.startswith("encoder.") for k in keys) and "adapter.0.weight" in keys
    top = TextEncoderBackbone(freeze=True, train_last_n_layers=1, out_dim=32)
    trainable = {n.split(".")[2] for n, p in top.encoder.named_parameters() if p.requires_grad and ".layer." in n}
    assert trainable == {str(len(top.encoder.encoder.layer) - 1)}
    assert any(k.startswith("encoder.encoder.layer.5.") for k in top.state_dict())
    top.load_state_dict(top.state_dict())  # round trip with frozen weights filled from the model
    # policy=text_small with policy.backbone.train_last_n_layers=2: both kept layers are stored, the frozen
    # input embeddings are not
    small = TextEncoderBackbone(freeze=True, train_last_n_layers=2, num_layers=2, out_dim=32)
    stored = {k.split(".")[1] if k.startswith("encoder.embeddings") else ".".join(k.split(".")[:4])
              for k in small.state_dict() if k.startswith("encoder.")}
    assert stored == {"encoder.encoder.layer.0", "encoder.encoder.layer.1"}, stored


def test_finetuned_encoder_layers_train_at_their_own_learning_rate():
    """encoder_lr_scale: the fine-tuned encoder layers form their own optimizer group at lr x scale; the
    adapter and the heads keep the optimizer's lr; frozen weights are in no group."""
    from fex.module import ExplainerModule
    from fex.policy import Policy
    from fex.policy.text import TextEncoderBackbone

    bb = TextEncoderBackbone(freeze=True, train_last_n_layers=1, out_dim=32, num_layers=2, encoder_lr_scale=0.1)
    policy = Policy(bb, num_classes=2, hidden=16)
    module = ExplainerModule.__new__(ExplainerModule)
    torch.nn.Module.__init__(module)
    module.policy, module.scheduler_factory = policy, None
    module.optimizer_factory = partial(torch.optim.Adam, lr=1e-3)
    opt = module.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-4, 1e-3])
    enc = next(g for g in opt.param_groups if g["lr"] == pytest.approx(1e-4))["params"]
    assert {id(q) for q in enc} == {id(q) for q in bb.encoder.encoder.layer[1].parameters()}
    grouped = sum(len(g["params"]) for g in opt.param_groups)
    assert grouped == sum(1 for q in policy.parameters() if q.requires_grad)
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        TextEncoderBackbone(freeze=True, out_dim=32, num_layers=1, encoder_lr_scale=0)


def test_text_checkpoint_alone_explains_and_evaluates(tmp_path, capsys):
    """fex-explain text="..." / input=file.txt and evaluate with nothing but the checkpoint: its data
    and target configs come from inside it; words go to scores.json, the terminal and an HTML gallery."""
    import json

    from fex.cli import explain_main
    from fex.tasks.evaluate import evaluate
    from fex.tasks.train import train

    cfg = compose("train", TEXT_FAST + FAST + ["policy=word_embedding"], output_dir=tmp_path)
    metrics, _ = train(cfg)
    assert metrics["gallery"].endswith("heatmaps.html") and "target/test_accuracy" in metrics
    # the test's target is a callable of this test suite, not one of fex's own: a checkpoint never runs
    # code, so it is named on the command line (everything else comes from the checkpoint)
    tgt = TEXT_FAST[1:4]
    over = [f"checkpoint={metrics['checkpoint']}", f"output_dir={tmp_path / 'out'}", *tgt]
    assert explain_main(over + ["text=a truly great little film"]) == 0
    got = json.loads((tmp_path / "out" / "scores.json").read_text())
    rec = got["explained"][0]
    assert rec["words"] == ["a", "truly", "great", "little", "film"] and len(rec["scores"]) == 5
    assert rec["class"] in ("rotten", "fresh") and 0 < rec["probability"] <= 1
    assert "great" in capsys.readouterr().out
    assert explain_main(over + ["text=   "]) == 2  # empty text: one-line error
    assert capsys.readouterr().err.strip().startswith("error:")
    f = tmp_path / "reviews.txt"
    f.write_text("a great film\n\nnot good at all\n")
    assert explain_main([f"checkpoint={metrics['checkpoint']}", f"input={f}", f"output_dir={tmp_path / 'o2'}", *tgt]) == 0
    got = json.loads((tmp_path / "o2" / "scores.json").read_text())
    assert [r["line"] for r in got["explained"]] == [1, 3] and got["explained"][1]["words"][2] == "at"  # true lines
    ev = compose("evaluate", [f"checkpoint={metrics['checkpoint']}", *tgt, "method=[fex,random]", "compare.num_examples=4",
                              "compare.batch_size=2", "attribution.score=false"], output_dir=tmp_path / "ev")
    m, objects = evaluate(ev)
    assert m["attribution/rows"] == len(objects["datamodule"].dataset("test"))
    assert (tmp_path / "ev" / "gallery.html").is_file() and m["files"]["gallery"].endswith("gallery.html")


def test_truncated_encoder_policy_is_the_first_layers_and_reloads(tmp_path):
    """policy=text_small: the first num_layers layers of the same pretrained MiniLM, with identical
    outputs to running the full encoder's first layers; a checkpoint rebuilds the same truncation."""
    from hydra.utils import instantiate

    from fex.errors import ConfigError
    from fex.maskers.text import encode_texts
    from fex.policy.text import TextEncoderBackbone

    cfg = compose("train", ["experiment=text_rt", "policy=text_small"], output_dir=tmp_path)
    small = instantiate(cfg.policy.backbone)
    full = TextEncoderBackbone(out_dim=32)
    k = cfg.policy.backbone.num_layers
    assert len(small.encoder.encoder.layer) == k < len(full.encoder.encoder.layer)
    x = encode_texts(["a gorgeous , witty film", "dull"])
    with torch.no_grad():
        h_small = small.encoder(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        hs = full.encoder(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                          output_hidden_states=True).hidden_states
    torch.testing.assert_close(h_small, hs[k])  # layer k's output of the full encoder
    with pytest.raises(ConfigError):
        TextEncoderBackbone(num_layers=99)


@pytest.mark.parametrize("preset", ["text_rt", "text_rt_quick", "text_rt_fine"])
def test_text_presets_fast_dev_run_without_the_minilm_target(preset, tmp_path):
    """The text presets run end to end as fast dev runs on a planted-word target (no MiniLM fine-tune)."""
    from fex.tasks.train import train

    over = [f"experiment={preset}", *TEXT_FAST[1:], "trainer.fast_dev_run=true", "data.limit=64", "logger=none",
            "trainer.enable_progress_bar=false", "gallery_size=2", "val_auc_examples=4"]
    metrics, objects = train(compose("train", over, output_dir=tmp_path))
    assert os.path.isfile(metrics["checkpoint"]) and metrics["train/queries"] > 0
    layers = objects["module"].policy.backbone.encoder.encoder.layer
    trained = [all(p.requires_grad for p in layer.parameters()) for layer in layers]
    # text_rt_fine: all 6 MiniLM layers in the policy, every one fine-tuned; the others: 2 frozen layers
    assert trained == ([True] * 6 if preset == "text_rt_fine" else [False] * 2)


def test_banked_text_preset_queries_each_snippet_once_and_never_banks_padding(tmp_path):
    """experiment=text_rt over 3 epochs: every training snippet costs 1 + query_budget queries, all in the
    first epoch; the bank keeps exactly each snippet's own words (padding is never a feature)."""
    from fex.tasks.train import train

    over = ["experiment=text_rt", *TEXT_FAST[1:], "data.limit=32", "trainer.max_epochs=3",
            "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none",
            "trainer.enable_progress_bar=false", "gallery_size=2", "val_auc_examples=4"]
    cfg = compose("train", over, output_dir=tmp_path)
    metrics, objects = train(cfg)
    budget, bank = int(cfg.objective.query_budget), objects["module"]._bank
    ds = objects["datamodule"].train_dataloader().dataset
    n = len(ds)
    assert n == 32 and len(bank) == n
    assert metrics["train/queries"] == n * (1 + budget)  # 3 epochs, the cost of one
    for i in range(n):
        text, _, key = ds[i]
        assert bank.masks[int(key)].shape == (budget, len(text.split()))
    assert cfg.objective.sampler == "paired_uniform" and cfg.objective.reward == "logprob"
