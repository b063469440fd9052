"""Known answers on real sentences: a text preset trained on Rotten Tomatoes against a linear bag-of-words
black box whose per-word effects are known exactly, scored by Spearman against them (issue #20 item 4).

    python benchmarks/known_text.py                              # experiment=text_rt, 200 test snippets
    python benchmarks/known_text.py --experiment text_rt_quick   # any preset, by name
    python benchmarks/known_text.py data.limit=2000              # Hydra overrides of the training run

The black box (``tests.text_helpers.linear_bow``, through ``target=text_callable``, numpy probabilities):
``logit p(fresh | text) = sum of hashed word counts x fixed N(0, 0.5^2) weights``. Its log-odds is additive
over the masker's features (whitespace words), so the true effect of word i on the explained class
``y_hat`` is ``e_i = +-(log-odds with word i - log-odds without it)`` (sign by ``y_hat``), whatever else
is kept: the Banzhaf, Shapley and leave-one-out value of the log-odds game all equal it. A reward that
increases with ``p(y_hat)`` (``prob``, ``logprob``) is a monotone function of that game, so its values
order most words the same way (exactly so for occlusion, which removes one word at a time; the
Banzhaf row is the preset's ``prob`` value computed per input, showing what that nonlinearity costs).

Rows, on the same test snippets (>= 3 words, not all effects equal) and the same explained class
(the black box's prediction): the preset's explainer (``fex``), occlusion (FeatureAblation, F + 1
queries), the per-input Banzhaf value of ``p(y_hat)`` (``--banzhaf-masks`` masks, 0: skip), random
scores; and two bounds on what an amortized explainer can learn here (the exact effects of the
words seen (twice) in its training snippets, 0 for the others: the weights are random, so a word
it never saw has no learnable effect). Per snippet: Spearman (average ranks for ties) between the scores and ``e``; the table gives
the mean, its spread and the share of snippets above 0.9. Quality only: it does not depend on load.
Writes ``table.md`` and ``metrics.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex (and tests.text_helpers), also when another one is installed

import fex  # noqa: E402,F401  (compat shims before lightning)
import torch  # noqa: E402

from fex.methods.baselines import Banzhaf, FeatureAblation, Fex, RandomAttribution  # noqa: E402
from fex.bench import compose, machine  # noqa: E402
from fex.data.text import load_splits  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.tda.evaluation import spearman  # noqa: E402

TARGET = ["target=text_callable", "target.model.path=tests.text_helpers.linear_bow", "target.output=probs"]


def known_target():
    """The black box's model object (``tests.text_helpers.linear_bow``): its ``effects`` are the answer."""
    from hydra.utils import get_object

    return get_object(TARGET[1].split("=", 1)[1])


def train_preset(experiment: str, out: Path, overrides: list[str]) -> tuple:
    """Train ``experiment=<name>`` against the known-answer black box (the preset's policy, masker,
    objective and training recipe; ``overrides`` on top). Returns (cfg, metrics, objects) of
    ``fex.tasks.train.train``."""
    from fex.tasks.train import train

    cfg = compose("train", [f"experiment={experiment}", *TARGET, f"output_dir={out}",
                            "trainer.enable_progress_bar=false", "gallery_size=4", *overrides])
    return (cfg, *train(cfg))


def held_out_snippets(data_cfg, masker, n: int, min_words: int = 3) -> list[str]:
    """The first ``n`` test-split snippets with at least ``min_words`` words (the whole split, whatever
    ``data.limit`` the training used) whose words do not all have the same effect."""
    splits, _ = load_splits(data_cfg.source, data_cfg.cache_dir, data_cfg.val_size, data_cfg.test_size, data_cfg.seed)
    model, out = known_target(), []
    for text in splits["test"].texts:
        words = masker.encode([text])["words"][0]  # the masker's features (after any truncation)
        if len(words) >= min_words and len(set(model.effects(words).round(9).tolist())) > 1:
            out.append(text)
        if len(out) == n:
            break
    return out


class SeenWordsOracle(RandomAttribution):
    """A bound, not a method: the exact effect of every word that occurs at least ``min_count`` times in
    the explainer's training snippets, 0 for the others. An amortized explainer answers without queries,
    so a word it never saw in training has no effect it could have learned (the weights are random)."""

    name = "seen_words_oracle"

    def __init__(self, blackbox, masker, train_texts: list[str], min_count: int = 1) -> None:
        super().__init__(blackbox, masker)
        from collections import Counter

        counts = Counter(w for t in train_texts for w in t.split())
        self.seen = {w for w, c in counts.items() if c >= min_count}

    def attribute(self, x, target) -> torch.Tensor:
        model, valid = known_target(), self.masker.valid(x).cpu()
        out = torch.zeros(valid.shape)
        for i, words in enumerate(x["words"]):
            e = torch.as_tensor(model.effects(words, int(target[i])), dtype=torch.float32)
            out[i, : len(words)] = e * torch.tensor([w in self.seen for w in words], dtype=torch.float32)
        return out


def known_answer_rows(methods: dict, blackbox, masker, texts: list[str], batch_size: int = 64) -> list[dict]:
    """Per method: mean / std / min of the per-snippet Spearman between its word scores and the true
    effects, the share of snippets >= 0.9, and its black-box queries per snippet."""
    model = known_target()
    x_all = masker.encode(texts)
    with blackbox.uncounted():
        target = blackbox(x_all).argmax(-1)  # the explained class: the prediction, the same for every method
    rows = []
    for name, method in methods.items():
        rho, q0 = [], blackbox.queries
        for s in range(0, len(texts), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(texts)))
            x = masker.select(x_all, idx)
            scores = method.attribute(x, target[idx]).float()
            for j, i in enumerate(idx.tolist()):
                words = x_all["words"][i]
                truth = torch.as_tensor(model.effects(words, int(target[i])))
                rho.append(spearman(scores[j, : len(words)], truth))
        rows.append({"method": name, "spearman": statistics.fmean(rho), "spearman_std": statistics.pstdev(rho),
                     "spearman_min": min(rho), "share_ge_0.9": sum(r >= 0.9 for r in rho) / len(rho),
                     "queries_per_snippet": (blackbox.queries - q0) / len(texts), "n": len(rho), "per_snippet": rho})
    return rows


FREQ_BINS = ((0, 0), (1, 1), (2, 4), (5, 19), (20, 99), (100, None))


def by_frequency(method, blackbox, masker, texts: list[str], train_texts: list[str]) -> str:
    """Where a method's word scores go wrong: Pearson and slope of score on the true effect, per bin of how
    often the word occurs in the training snippets (a markdown table)."""
    from collections import Counter

    from fex.metrics import pearson

    counts = Counter(w for t in train_texts for w in t.split())
    x = masker.encode(texts)
    with blackbox.uncounted():
        target = blackbox(x).argmax(-1)
    scores = method.attribute(x, target).float()
    model, s, e, c = known_target(), [], [], []
    for i, words in enumerate(x["words"]):
        s += scores[i, : len(words)].tolist()
        e += model.effects(words, int(target[i])).tolist()
        c += [counts[w] for w in words]
    s, e, c = torch.tensor(s), torch.tensor(e, dtype=torch.float32), torch.tensor(c)
    lines = ["| words seen in training | share of words | Pearson(score, e) | slope score / e |", "|---|---|---|---|"]
    for lo, hi in FREQ_BINS:
        k = (c >= lo) & (c <= (hi if hi is not None else c.max()))
        if int(k.sum()) > 1:
            slope = float((s[k] * e[k]).sum() / (e[k] * e[k]).sum().clamp_min(1e-12))
            lines.append(f"| {lo}{'' if hi == lo else ('+' if hi is None else f'-{hi}')} | {float(k.float().mean()):.2f} | "
                         f"{float(pearson(s[k][None], e[k][None])[0]):.2f} | {slope:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| method | mean Spearman | std | min | share >= 0.9 | queries / snippet |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['spearman']:.3f} | {r['spearman_std']:.3f} | {r['spearman_min']:.3f} | "
              f"{r['share_ge_0.9']:.2f} | {r['queries_per_snippet']:.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="text_rt", help="the preset to train (conf/experiment/<name>.yaml)")
    p.add_argument("--n", type=int, default=200, help="test snippets scored (>= 3 words each)")
    p.add_argument("--banzhaf-masks", type=int, default=500, help="masks per snippet of the Banzhaf row (0: skip)")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/known_text"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training run (conf/train.yaml)")
    a = p.parse_args(argv)
    out = Path(a.out)
    cfg, metrics, objects = train_preset(a.experiment, out / "train", list(a.overrides))
    explainer, bb = objects["explainer"], objects["blackbox"]
    texts = held_out_snippets(cfg.data, explainer.masker, a.n)
    methods = {"fex": Fex(bb, explainer=explainer), "occlusion (FeatureAblation)": FeatureAblation(bb, explainer.masker)}
    if a.banzhaf_masks:
        methods[f"Banzhaf({a.banzhaf_masks}) of p(y_hat)"] = Banzhaf(bb, explainer.masker, n_masks=a.banzhaf_masks)
    methods["random"] = RandomAttribution(bb, explainer.masker, seed=0)
    train_texts = objects["datamodule"].dataset("train").texts
    methods["bound: exact effects of words seen in training, else 0"] = SeenWordsOracle(bb, explainer.masker, train_texts)
    methods["bound: ... seen >= 2 times"] = SeenWordsOracle(bb, explainer.masker, train_texts, min_count=2)
    rows = known_answer_rows(methods, bb, explainer.masker, texts)
    words = explainer.masker.valid(explainer.masker.encode(texts)).sum(1).float()
    obj = {k: v for k, v in cfg.objective.items() if k in ("estimator", "reward", "sampler", "num_samples",
                                                             "temperature", "attribution", "query_budget")}
    header = (f"Known answer on Rotten Tomatoes: experiment={a.experiment} {' '.join(a.overrides)} against the linear "
              f"bag-of-words black box (tests.text_helpers.linear_bow); {len(texts)} test snippets, "
              f"{words.mean():.1f} words on average (max {int(words.max())}); objective {obj}; "
              f"{metrics['train/queries']:,} training queries, {int(metrics.get('epoch', 0)) + 1} epoch(s); "
              f"{machine()}\n")
    text = (header + "\n" + table(rows) + "\n\nfex per word, by how often the word occurs in the training snippets:\n\n"
            + by_frequency(methods["fex"], bb, explainer.masker, texts, train_texts) + "\n")
    write_text(out / "table.md", text)
    write_json(out / "metrics.json", {"experiment": a.experiment, "overrides": a.overrides, "objective": obj,
                                      "train": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                      "texts": texts, "rows": rows})
    print(text)
    return rows


if __name__ == "__main__":
    main()
