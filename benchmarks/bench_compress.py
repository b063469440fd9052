"""Prompt compression on Rotten Tomatoes: keep the top words by attribution; is the prediction kept?

    python benchmarks/bench_compress.py --checkpoint outputs/text/explainer.ckpt [--n 200] [--keep 0.3 0.5 0.7]
    python benchmarks/bench_compress.py --n 100          # no text explainer yet: the baselines only

For each method (fex from ``--checkpoint``, KernelShap(200), FeatureAblation, random) and keep fraction,
every test snippet is shortened by :func:`fex.compress` (its ``ceil(keep * n)`` top words, in order) and
the target (the checkpoint's, else ``minilm_sentiment``) is asked again. Per row: prediction kept (%)
(the shortened text's predicted class = the full text's), the mean change in p(y_hat) (shortened minus
full), and the method's cost per snippet: target queries (counted by the black box; the prediction
query every method needs is excluded) and seconds (wall time; **measured on whatever machine ran it:
label it, and rerun on an idle machine before quoting it**). The attribution is computed once per
snippet and reused for every keep fraction; each method first explains 2 snippets untimed (warm-up).
Writes ``<out>/compress.json`` and ``<out>/compress.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401  (torchvision compat shim first)
from fex.methods.baselines import FeatureAblation, KernelShap, RandomAttribution  # noqa: E402
from fex.bench import compose, load, machine  # noqa: E402
from fex.compression import compress_words, word_scores  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.maskers.text import WordMasker  # noqa: E402
from fex.config import build_blackbox, build_data  # noqa: E402


def setup(checkpoint: str | None):
    """(black box, masker, explainer or None, test texts)."""
    if checkpoint:
        cfg, bb, explainer, ds = load(checkpoint, "random", [])
        return bb, explainer.masker, explainer, [ds[i][0] for i in range(len(ds))]
    cfg = compose("train", ["experiment=text_rt", "output_dir=."])
    bb = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    dm = build_data(cfg.data)
    dm.setup("test")
    ds = dm.dataset("test")
    return bb, WordMasker(max_length=int(cfg.data.max_length)), None, [ds[i][0] for i in range(len(ds))]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a text explainer; without it the fex row is skipped")
    p.add_argument("--n", type=int, default=200, help="test snippets")
    p.add_argument("--keep", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--kernel-shap-samples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "outputs/bench/compress"))
    a = p.parse_args(argv)
    bb, masker, explainer, texts = setup(a.checkpoint)
    texts = texts[:a.n]
    methods = {} if explainer is None else {"fex": explainer}
    methods.update({f"kernel_shap({a.kernel_shap_samples})": KernelShap(bb, masker, n_samples=a.kernel_shap_samples),
                    "feature_ablation": FeatureAblation(bb, masker), "random": RandomAttribution(bb, masker)})
    with bb.uncounted():
        p_full = torch.cat([bb(texts[s:s + 64]) for s in range(0, len(texts), 64)]).cpu()
    y = p_full.argmax(1)
    rows = []
    for name, m in methods.items():
        with bb.uncounted():  # warm-up, untimed and uncounted: lazy tokenizer/graph set-up is not a per-text cost
            word_scores(m, masker.encode(texts[:2]), y[:2])
        short = {k: [] for k in a.keep}
        queries, seconds = 0, 0.0
        for s in range(0, len(texts), a.batch_size):
            x = masker.encode(texts[s:s + a.batch_size])
            t = y[s:s + a.batch_size]
            with bb.counting() as c:
                t0 = time.perf_counter()
                scores, _ = word_scores(m, x, t)
                seconds += time.perf_counter() - t0
            queries += c.n
            for k in a.keep:
                short[k] += [compress_words(w, scores[i], k) for i, w in enumerate(x["words"])]
        for k in a.keep:
            with bb.uncounted():
                p_short = torch.cat([bb(short[k][s:s + 64]) for s in range(0, len(texts), 64)]).cpu()
            kept = (p_short.argmax(1) == y).float()
            dp = p_short.gather(1, y.view(-1, 1)) - p_full.gather(1, y.view(-1, 1))
            rows.append({"method": name, "keep": k, "prediction_kept": float(kept.mean()),
                         "delta_p": float(dp.mean()), "queries_per_text": queries / len(texts),
                         "sec_per_text": seconds / len(texts)})
            print(rows[-1], flush=True)
    res = {"checkpoint": a.checkpoint, "n": len(texts), "machine": machine(), "rows": rows}
    write_json(Path(a.out) / "compress.json", res)
    md = markdown(res)
    write_text(Path(a.out) / "compress.md", md)
    print(md)
    return res


def markdown(res: dict) -> str:
    lines = [f"Rotten Tomatoes test, {res['n']} snippets; {res['machine']} (wall times: this machine, as it was)", "",
             "| method | keep | prediction kept | Δ p(ŷ) | queries/text | s/text |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['keep']} | {100 * r['prediction_kept']:.1f}% | {r['delta_p']:+.3f} | "
                     f"{r['queries_per_text']:.1f} | {r['sec_per_text']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
