"""explain(cfg): a trained explainer on the user's own files.

Input is a folder of images (PNG/JPEG; each converted to the explainer's channels and
size) or a text file (one example per line) / CSV file (a ``text`` column, else the first
column) for text explainers. Output under ``output_dir``: one heatmap PNG per image
(``<name>.heatmap.png``), ``scores.json`` (per input: explained class, probability, feature
scores; skipped files with the reason) and ``scores.npz``. Unreadable inputs are reported
by name on stderr and skipped; the rest are still explained. Files are written atomically.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from fex.errors import DataError, FexError
from fex.module import ExplainerModule, load_checkpoint_dict
from fex.plotting import heatmap_grid
from fex.tasks.common import build_blackbox
from fex.tasks.evaluate import write_json

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TEXT_EXTS = (".txt", ".csv", ".tsv")


def load_image(path: Path, shape: tuple[int, int, int]) -> torch.Tensor:
    """[C, H, W] float in [0, 1] resized to ``shape``; raises on anything PIL cannot decode."""
    from PIL import Image

    c, h, w = shape
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1)


def read_texts(path: Path) -> list[str]:
    if path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        if not rows:
            return []
        col = rows[0].index("text") if "text" in rows[0] else 0
        body = rows[1:] if "text" in rows[0] else rows
        return [r[col] for r in body if len(r) > col and r[col].strip()]
    with open(path, encoding="utf-8") as fh:
        return [line.rstrip("\n") for line in fh if line.strip()]


def _report(skipped: list[dict], name: str, why: str) -> None:
    skipped.append({"file": name, "reason": why})
    print(f"warning: skipped {name}: {why}", file=sys.stderr)


def gate_fields(exp: dict, i: int) -> dict:
    """Per-input trust-gate outcome (``verify=``): passed, queries spent, which method attributed."""
    if "passed" not in exp:
        return {}
    return {"gate_passed": bool(exp["passed"][i]), "gate_queries": int(exp["queries"][i]), "method": exp["method"][i]}


def explain_images(explainer: ExplainerModule, files: list[Path], out: Path, batch_size: int, verify: Any = None) -> dict:
    masker = explainer.masker
    shape = getattr(masker, "input_shape", None)
    if shape is None:
        raise DataError("this explainer is not an image explainer (its masker has no input_shape)")
    skipped: list[dict] = []
    items: list[tuple[str, torch.Tensor]] = []
    for f in files:
        try:
            items.append((f.name, load_image(f, shape)))
        except Exception as exc:  # noqa: BLE001 - any decode failure: report by name, go on
            _report(skipped, f.name, f"not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    results, scores_all = [], []
    for s in range(0, len(items), batch_size):
        names = [n for n, _ in items[s:s + batch_size]]
        x = torch.stack([t for _, t in items[s:s + batch_size]])
        exp = explainer.explain(x, verify=verify)
        probs = explainer.blackbox(x) if explainer.blackbox is not None else None
        for i, name in enumerate(names):
            cls = int(exp["target"][i])
            png = heatmap_grid(x[i:i + 1], [("FEX", exp["attributions"][i:i + 1])], [f"class {cls}"],
                               out / f"{Path(name).stem}.heatmap.png")
            results.append({"file": name, "target": cls,
                            "probability": None if probs is None else float(probs[i, cls]),
                            "scores": exp["scores"][i].tolist(), "heatmap": png.name, **gate_fields(exp, i)})
            scores_all.append(exp["scores"][i].numpy())
    return {"results": results, "skipped": skipped, "scores": scores_all}


def explain_texts(explainer: ExplainerModule, texts: list[str], name: str, batch_size: int, verify: Any = None) -> dict:
    """Explain texts (from a file, or one sentence given on the command line) word by word."""
    masker = explainer.masker
    if not hasattr(masker, "encode"):
        raise DataError(f"{name} is text but this explainer's masker ({type(masker).__name__}) explains images")
    skipped: list[dict] = []
    results, scores_all = [], []
    for s in range(0, len(texts), batch_size):
        good = []
        for j, t in enumerate(texts[s:s + batch_size], start=s):
            try:
                masker.encode([t])
                good.append((j, t))
            except FexError as exc:
                _report(skipped, f"{name}:{j + 1}", str(exc))
        if not good:
            continue
        x = masker.encode([t for _, t in good])
        exp = explainer.explain(x, verify=verify)
        for i, (j, t) in enumerate(good):
            n = int(exp["valid"][i].sum())
            rec = {"line": j + 1, "text": t, "target": int(exp["target"][i]), "scores": exp["scores"][i, :n].tolist(),
                   **gate_fields(exp, i)}
            if "words" in x:
                rec["words"] = list(x["words"][i])
            results.append(rec)
            scores_all.append(exp["scores"][i, :n].numpy())
    return {"results": results, "skipped": skipped, "scores": scores_all}


def explain(cfg: DictConfig) -> tuple[dict, dict]:
    """Returns (metrics, objects); metrics lists the outputs written."""
    sentence = cfg.get("text")
    src = Path(os.path.expanduser(str(cfg.get("input") or "")))
    if sentence is None and (not cfg.get("input") or not src.exists()):
        raise DataError(f"input not found: {src}" if cfg.get("input") else "give input=<file or folder> or text=<sentence>")
    out = Path(os.path.expanduser(str(cfg.output_dir)))
    load_checkpoint_dict(os.path.expanduser(str(cfg.checkpoint)))  # fail fast, before building the target
    blackbox = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    explainer = ExplainerModule.from_checkpoint(os.path.expanduser(str(cfg.checkpoint)), target=blackbox,
                                                allow_target_mismatch=bool(cfg.allow_target_mismatch))
    out.mkdir(parents=True, exist_ok=True)
    bs = int(cfg.batch_size)
    verify = None
    if cfg.get("verify"):  # the calibrated trust gate of this checkpoint (<checkpoint>.gate.json)
        from fex.gate import Gate

        verify = Gate.load(os.path.expanduser(str(cfg.checkpoint)))
    if sentence is not None:
        if hasattr(explainer.masker, "encode"):
            explainer.masker.encode([str(sentence)])  # a bad sentence is the error itself, not a skipped row
        res = explain_texts(explainer, [str(sentence)], "text", bs, verify)
    elif src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"no files in {src}")
        res = explain_images(explainer, files, out, bs, verify)
    elif src.suffix.lower() in TEXT_EXTS:
        try:
            texts = read_texts(src)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read {src}: {exc}") from exc
        res = explain_texts(explainer, texts, src.name, bs, verify)
    elif src.suffix.lower() in IMAGE_EXTS:
        res = explain_images(explainer, [src], out, bs, verify)
    else:
        raise DataError(f"{src}: expected a folder of images, an image, or a .txt/.csv file")
    if not res["results"]:
        raise DataError(f"nothing could be explained in {src} ({len(res['skipped'])} inputs skipped)")
    if res["results"] and "words" in res["results"][0]:  # text: colored words in the terminal
        from fex.textviz import print_terminal

        print_terminal([r["words"] for r in res["results"]], [r["scores"] for r in res["results"]],
                       [f"class {r['target']}" for r in res["results"]])
    npz = out / "scores.npz"
    tmp = out / ".scores.npz.tmp"
    keys = [str(r.get("file", r.get("line"))) for r in res["results"]]
    with open(tmp, "wb") as fh:  # ragged (text) scores are stored one array per input
        np.savez(fh, names=np.asarray(keys), targets=np.asarray([r["target"] for r in res["results"]]),
                 **{f"scores_{i}": s for i, s in enumerate(res["scores"])})
    os.replace(tmp, npz)
    js = write_json(out / "scores.json", {"checkpoint": str(cfg.checkpoint), "input": str(src) if sentence is None else "text",
                                          "explained": res["results"], "skipped": res["skipped"]})
    metrics = {"explained": len(res["results"]), "skipped": len(res["skipped"]), "json": str(js), "npz": str(npz),
               "output_dir": str(out)}
    print(f"fex-explain: {metrics['explained']} explained, {metrics['skipped']} skipped -> {out}", flush=True)
    return metrics, {"explainer": explainer, **res}
