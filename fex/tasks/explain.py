"""explain(cfg): a trained explainer on the user's own files, with nothing but its checkpoint.

Inputs are read by the explainer's masker (``masker.renderer()``): for image explainers a
folder of PNG/JPEG images or one image (converted to the explainer's channels and size);
for text explainers a .txt file (one text per line), a .csv/.tsv file (a ``text`` column, else
the first) or ``text="..."``. Output under ``output_dir``: what the renderer draws per input
(``<name>.heatmap.png`` for images; coloured words in the terminal for text), ``scores.json``
(per input: explained class, its name and probability, feature scores; skipped inputs with
the reason) and ``scores.npz``. ``compress=0.5`` (text explainers) also keeps each text's top half of
words by attribution, in order (:mod:`fex.compression`): ``compressed`` per input in scores.json and
``compressed.txt`` (one text per line). Unreadable inputs are reported on stderr and skipped; the
rest are still explained. Files are written atomically.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fex.compression import check_compressible, compress_words
from fex.errors import DataError
from fex.explainer import open_checkpoint
from fex.gate import Gate
from fex.inputs import check_options
from fex.io import atomic_write, check_writable, write_json, write_text
from fex.module import ExplainerModule


def gate_fields(exp: dict, i: int) -> dict:
    """Per-input trust-gate outcome (``verify=``): passed, queries spent, which method attributed."""
    if "passed" not in exp:
        return {}
    return {"gate_passed": bool(exp["passed"][i]), "gate_queries": int(exp["queries"][i]), "method": exp["method"][i]}


def explain_items(explainer: ExplainerModule, items: list[tuple[dict, Any]], out: Path, batch_size: int,
                  verify: Any = None) -> list[dict]:
    """Explain ``(record, item)`` pairs in batches; one query per input for the prediction.
    ``verify``: a :class:`fex.gate.Gate` that checks each explanation (its queries are its own)."""
    renderer, names = explainer.masker.renderer(), explainer.class_names
    results = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        x = renderer.collate([item for _, item in chunk])
        probs = explainer.blackbox(x) if explainer.blackbox is not None else None
        exp = explainer.explain(x, None if probs is None else probs.argmax(-1), verify=verify)
        for i, (record, _) in enumerate(chunk):
            cls, n = int(exp["target"][i]), int(exp["valid"][i].sum())
            rec = {**record, "target": cls, "class": names[cls],
                   "probability": None if probs is None else float(probs[i, cls]),
                   "scores": exp["scores"][i, :n].tolist(), **renderer.describe(x, i), **gate_fields(exp, i)}
            one = explainer.masker.select(x, [i])
            drawn = renderer.save(one, exp["scores"][i:i + 1], out / Path(str(record.get("file", i))).stem,
                                  f"class {names[cls]}")
            if drawn is not None:
                rec["heatmap"] = drawn.name
            results.append(rec)
        captions = [f"{names[int(c)]}" + ("" if probs is None else f" p={float(probs[i, c]):.3f}")
                    for i, c in enumerate(exp["target"].tolist())]
        renderer.show(x, exp["scores"], captions)
    return results


def explain(cfg: DictConfig) -> tuple[dict, dict]:
    """Returns (metrics, objects); metrics lists the outputs written."""
    sentence = cfg.get("text")
    src = Path(os.path.expanduser(str(cfg.get("input") or "")))
    if sentence is None and (not cfg.get("input") or not src.exists()):
        raise DataError(f"input not found: {src}" if cfg.get("input") else "give input=<file or folder> or text=<sentence>")
    out = check_writable(cfg.output_dir)  # created lazily, by the first file written
    convert = {k: cfg.get(k, d) for k, d in (("input_size", "strict"), ("channels", "strict"), ("scale", "auto"))}
    check_options(**convert)  # a typo fails now, not per file
    cfg, explainer = open_checkpoint(cfg)  # read once, failing fast, before the target is built
    keep = cfg.get("compress")
    if keep is not None:
        check_compressible(explainer.masker, keep)  # a bad fraction or an image explainer fails now
    renderer = explainer.masker.renderer()
    renderer.convert = convert  # explicit input conversions (images), see fex.inputs
    if sentence is not None:
        items, skipped = [renderer.parse(str(sentence))], []
    else:
        items, skipped = renderer.read(src)
    for s in skipped:
        print(f"warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
    if not items:
        raise DataError(f"nothing could be explained in {src} ({len(skipped)} inputs skipped)")
    verify = None
    if cfg.get("verify"):  # the calibrated trust gate of this checkpoint (<checkpoint>.gate.json)
        verify = Gate.load(os.path.expanduser(str(cfg.checkpoint)))
    results = explain_items(explainer, items, out, int(cfg.batch_size), verify)
    if keep is not None:  # the words are the text masker's features, as in rec["words"]
        for rec in results:
            rec["compressed"] = compress_words(rec["words"], rec["scores"], float(keep))
        write_text(out / "compressed.txt", "".join(r["compressed"] + "\n" for r in results))
    keys = [str(r.get("file", r.get("line"))) for r in results]
    with atomic_write(out / "scores.npz") as fh:  # ragged (text) scores are stored one array per input
        np.savez(fh, names=np.asarray(keys), targets=np.asarray([r["target"] for r in results]),
                 **{f"scores_{i}": np.asarray(r["scores"], dtype=np.float32) for i, r in enumerate(results)})
    js = write_json(out / "scores.json", {"checkpoint": str(cfg.checkpoint), "input": str(src) if sentence is None else "text",
                                          "explained": results, "skipped": skipped,
                                          "notes": renderer.notes.summary() if getattr(renderer, "notes", None) else []})
    metrics = {"explained": len(results), "skipped": len(skipped), "json": str(js), "npz": str(out / "scores.npz"),
               "output_dir": str(out)}
    if keep is not None:
        metrics["compressed"] = str(out / "compressed.txt")
    print(f"fex-explain: {metrics['explained']} explained, {metrics['skipped']} skipped -> {out}", flush=True)
    return metrics, {"explainer": explainer, "results": results, "skipped": skipped}
