"""Word interactions of the MiniLM sentiment classifier with SPEX: HTML view and the negation check.

    python benchmarks/interactions_text.py --n 40 --budget 1000        # -> outputs/interactions_text/
    python benchmarks/interactions_text.py --quick                      # 3 snippets, smaller budget

Explains the first ``--n`` Rotten Tomatoes *test* snippets that contain a negation word ("not",
"never", "n't", or a word ending in n't) with ``fex.methods.spex.SpexInteractions`` (explained class =
the classifier's prediction; words masked with [MASK], as everywhere in fex), and measures how often
one of the top ``--top`` pairs (order-2 interactions by |FSII|) contains a negation word, next to
the rate a random choice of ``--top`` pairs would give. Writes ``interactions.html`` (the first
``--html`` snippets), ``results.json`` and ``summary.md``. Not a timing benchmark: query counts are
exact, the run takes a few CPU-minutes.
"""
from __future__ import annotations

import argparse
import math
import os
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fex  # noqa: E402,F401
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fex.config import build_blackbox, build_data, conf_dir  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.methods.interactions_html import interaction_block, write_interactions_html  # noqa: E402
from fex.methods.spex import SpexInteractions  # noqa: E402
from fex.render import markdown_table  # noqa: E402

NEGATIONS = ("not", "never", "n't")


def is_negation(word: str) -> bool:
    w = word.lower().strip(string.punctuation.replace("'", ""))
    return w in NEGATIONS or w.endswith("n't")


def chance_rate(n: int, neg: list[int], top: int) -> float:
    """P(at least one of ``top`` distinct random pairs of n words contains a negation position)."""
    pairs = math.comb(n, 2)
    with_neg = pairs - math.comb(n - len(neg), 2)
    k = min(top, pairs)
    return 1 - math.comb(pairs - with_neg, k) / math.comb(pairs, k)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="test snippets with a negation word explained")
    p.add_argument("--budget", type=int, default=1000, help="SPEX queries per snippet (at most)")
    p.add_argument("--top", type=int, default=3, help="top pairs checked for a negation")
    p.add_argument("--html", type=int, default=20, help="snippets shown in the HTML page")
    p.add_argument("--max-words", type=int, default=40, help="skip longer snippets")
    p.add_argument("--quick", action="store_true", help="3 snippets, budget 700 (validation)")
    p.add_argument("--out", default=str(ROOT / "outputs/interactions_text"))
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.budget, a.html = 3, 700, 3
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("evaluate", ["data=rotten_tomatoes", "target=minilm_sentiment", "checkpoint=none", "method=[]"])
    bb = build_blackbox(cfg.target, num_classes=int(cfg.data.num_classes))
    masker = instantiate(OmegaConf.load(conf_dir() / "masker/words.yaml"))
    dm = build_data(cfg.data)
    dm.setup()
    test = dm._splits["test"]
    names = dm.label_names or ["0", "1"]
    chosen = [i for i, t in enumerate(test.texts) if any(is_negation(w) for w in t.split())
              and len(t.split()) <= a.max_words][: a.n]
    method = SpexInteractions(bb, masker, budget=a.budget, max_order=2, index="FSII", top_k=10, seed=int(cfg.seed))

    def report(rows: list[dict], blocks: list[str]) -> dict:
        n = len(rows)
        frac = sum(r["negation_in_top"] for r in rows) / max(1, n)
        chance = sum(r["chance"] for r in rows) / max(1, n)
        q = [r["queries"] for r in rows]
        summary = {"snippets": n, "budget": a.budget, "top": a.top, "negation_in_top_pairs": frac,
                   "chance_rate": chance, "queries_mean": sum(q) / max(1, n), "queries_min": min(q, default=0),
                   "queries_max": max(q, default=0), "words_mean": sum(r["words"] for r in rows) / max(1, n)}
        out_dir = Path(a.out)
        intro = (f"MiniLM sentiment classifier, SPEX (FSII, order 2, budget {a.budget}), first {n} test snippets with a "
                 f"negation word; a top-{a.top} pair contains the negation in {frac:.0%} of them (random pairs: {chance:.0%}).")
        write_interactions_html(out_dir / "interactions.html", blocks, title="SPEX word interactions (MiniLM sentiment)",
                                intro=intro)
        write_json(out_dir / "results.json", {"summary": summary, "rows": rows})
        md = markdown_table(["snippets", "budget", "mean queries (min-max)", "mean words",
                             f"negation in top-{a.top} pairs", "random pairs"],
                            [[n, a.budget, f"{summary['queries_mean']:.0f} ({summary['queries_min']}-{summary['queries_max']})",
                              f"{summary['words_mean']:.1f}", f"{frac:.1%}", f"{chance:.1%}"]])
        write_text(out_dir / "summary.md", md + "\n")
        return summary

    rows, blocks, summary = [], [], {}
    for k, i in enumerate(chosen):
        x = masker.encode([test.texts[i]])
        with bb.uncounted():
            probs = bb(x)[0]
        pred = int(probs.argmax())
        out = method.explain(x, pred)
        words = x["words"][0]
        pairs = {t: v for t, v in out["interactions"][0].items() if len(t) == 2}
        top = sorted(pairs, key=lambda t: -abs(pairs[t]))[: a.top]
        neg = [j for j, w in enumerate(words) if is_negation(w)]
        hit = any(j in neg for t in top for j in t)
        rows.append({"test_index": i, "text": test.texts[i], "words": len(words), "prediction": names[pred],
                     "probability": float(probs[pred]), "queries": out["queries"][0], "solver": out["solver"][0],
                     "top_pairs": [[words[j] for j in t] + [pairs[t]] for t in top], "negation_in_top": hit,
                     "chance": chance_rate(len(words), neg, a.top)})
        print(f"[{k + 1}/{len(chosen)}] {len(words)} words, {out['queries'][0]} queries, top pairs "
              f"{[' x '.join(words[j] for j in t) for t in top]} negation={hit}", flush=True)
        if k < a.html:
            blocks.append(interaction_block(words, out["scores"][0].tolist(), out["interactions"][0],
                                            out["queries"][0], [f"test #{i}", f"prediction <b>{names[pred]}</b>",
                                                                f"p={float(probs[pred]):.3f}", out["solver"][0]]))
        summary = report(rows, blocks)  # rewritten after every snippet: a cut run keeps what it measured
    print(Path(a.out, 'summary.md').read_text())
    return summary


if __name__ == "__main__":
    main()
