"""Input conversions are explicit or refused (issue 11, item 5)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fex.errors import InputError
from fex.inputs import Notes, check_range, class_index, load_image, read_text_lines
from tests.helpers import planted_blackbox, small_explainer


def test_16bit_png_is_scaled_by_its_true_max(tmp_path):
    arr = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", (1, 2, 2))
    np.testing.assert_allclose(x[0].numpy(), arr / 65535.0, atol=1e-6)  # not saturated to 1.0
    assert x.dtype == torch.float32


def test_8bit_png_and_explicit_scale(tmp_path, caplog):
    arr = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "g.png")
    np.testing.assert_allclose(load_image(tmp_path / "g.png", (1, 2, 2))[0].numpy(), arr / 255.0, atol=1e-6)
    with caplog.at_level(logging.WARNING, logger="fex"):
        raw = load_image(tmp_path / "g.png", (1, 2, 2), scale=1)
    np.testing.assert_allclose(raw[0].numpy(), arr, atol=1e-4)
    assert any("scale=1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("size,mode,setting,match", [
    ((30, 40), "L", "input_size", "is 30x40 pixels; the explainer expects 28x28; set input_size=resize"),
    ((28, 28), "RGB", "channels", "has 3 channels \\(RGB\\); the explainer expects 1; set channels=convert"),
    ((28, 28), "RGBA", "channels", "has 4 channels \\(RGBA\\)"),
])
def test_other_size_or_channels_refused_unless_asked(tmp_path, caplog, size, mode, setting, match):
    w, h = size
    Image.new(mode, (w, h), color=(200,) * len(mode) if len(mode) > 1 else 200).save(tmp_path / "i.png")
    with pytest.raises(InputError, match=match):
        load_image(tmp_path / "i.png", (1, 28, 28))
    notes = Notes()
    with caplog.at_level(logging.WARNING, logger="fex"):
        x = load_image(tmp_path / "i.png", (1, 28, 28), notes=notes, **{setting: "resize" if setting == "input_size" else "convert"})
    assert x.shape == (1, 28, 28) and abs(float(x.mean()) - 200 / 255) < 0.01
    assert len(notes.counts) == 1 and any("note:" in r.getMessage() for r in caplog.records)


def test_pixels_that_look_0_255_are_refused():
    check_range(torch.rand(2, 1, 4, 4), (0.0, 1.0))
    with pytest.raises(InputError, match="look 0-255 .*divide by 255"):
        check_range(torch.rand(2, 1, 4, 4) * 255, (0.0, 1.0))
    with pytest.raises(InputError, match="outside the range"):
        check_range(torch.full((1, 1, 2, 2), -3.0), (0.0, 1.0))
    check_range(torch.full((1, 1, 2, 2), -3.0), None)  # no declared range: nothing to check


def test_explainer_with_a_value_range_refuses_0_255_and_accepts_float64():
    ex = small_explainer(blackbox=planted_blackbox())
    ex.masker.value_range = (0.0, 1.0)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="look 0-255"):
        ex.explain(x * 255)
    s32 = ex.feature_scores(x)
    s64 = ex.feature_scores(x.double())  # numpy's default dtype: cast, not a conv crash
    assert s64.dtype == torch.float32
    torch.testing.assert_close(s64, s32)
    with pytest.raises(InputError, match="x.float\\(\\) / 255"):
        ex.explain((x * 255).to(torch.uint8))


@pytest.mark.parametrize("target,match", [(2.7, "whole class indices"), ([0, 1.5, 1], "whole class indices"),
                                          (float("nan"), "whole class indices"), (True, "booleans"),
                                          (5, "out of range 0..1"), ([0, 1], "2 entries for a batch of 3")])
def test_bad_targets_are_refused_not_truncated(target, match):
    with pytest.raises(InputError, match=match):
        class_index(target, 3, 2)


def test_whole_float_targets_are_accepted():
    assert class_index(1.0, 2, 3).tolist() == [1, 1]
    assert class_index(torch.tensor([2, 0]), 2, 3).tolist() == [2, 0]
    ex = small_explainer(blackbox=planted_blackbox())
    with pytest.raises(InputError, match="whole class indices"):
        ex.explain(torch.rand(2, 1, 16, 16), target=0.5)


def test_text_line_numbers_survive_blank_lines(tmp_path):
    (tmp_path / "t.txt").write_text("first\n\n   \nfourth\n\nsixth\n")
    assert read_text_lines(tmp_path / "t.txt") == [(1, "first"), (4, "fourth"), (6, "sixth")]
    (tmp_path / "t.csv").write_text("id,text\n1,good\n2,\n3,bad\n")
    assert read_text_lines(tmp_path / "t.csv") == [(2, "good"), (4, "bad")]


def test_text_renderer_reports_file_line_numbers(tmp_path):
    from fex.render.text import TextRenderer

    class Masker:
        def encode(self, texts):
            if "bad" in texts[0]:
                raise InputError("too long")
            return {"words": [t.split() for t in texts]}

    (tmp_path / "t.txt").write_text("a film\n\n  \nbad one\n\ngreat\n")
    items, skipped = TextRenderer(Masker()).read(tmp_path / "t.txt")
    assert [rec["line"] for rec, _ in items] == [1, 6]
    assert skipped == [{"file": "t.txt:4", "reason": "too long"}]


def test_corrupt_text_target_cache_names_the_dir(tmp_path):
    import hashlib
    import json

    from fex.errors import TargetError
    from fex.targets import text as T

    # the cache dir for the default settings, with a damaged metadata file
    settings = {"source": "rotten_tomatoes", "seed": 0, "val_size": 1000, "test_size": 1000, "epochs": 1,
                "batch_size": 32, "lr": 1e-4, "max_length": 64, "train_last_n_layers": None, "base": None, "version": 1}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    root = tmp_path / "targets" / f"minilm_rotten_tomatoes_{key}"
    root.mkdir(parents=True)
    (root / "fex_target.json").write_text("{truncated")
    with pytest.raises(TargetError, match=f"target cache {root} is corrupt .*delete it"):
        T.minilm_sentiment(cache_dir=str(tmp_path))
    (root / "fex_target.json").write_text(json.dumps({"test_accuracy": 0.9}))  # weights missing
    with pytest.raises(TargetError, match="delete it"):
        T.minilm_sentiment(cache_dir=str(tmp_path))
