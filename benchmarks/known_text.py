"""Known answers on real sentences: a text preset trained on Rotten Tomatoes against a linear bag-of-words
black box whose per-word effects are known exactly, scored by Spearman against them (issue #20 item 4).

    python benchmarks/known_text.py                              # experiment=text_rt, 200 test snippets
    python benchmarks/known_text.py --experiment text_rt_quick   # any preset, by name
    python benchmarks/known_text.py --blackbox embedding         # the second known-answer black box
    python benchmarks/known_text.py data.limit=2000              # Hydra overrides of the training run
    python benchmarks/known_text.py --checkpoint outputs/bench/known_text/train/explainer.ckpt  # score, no training

Two black boxes (``--blackbox``, both in ``tests.text_helpers``, through ``target=text_callable``, numpy
probabilities), both ``logit p(fresh | text) = sum over whitespace words of a fixed per-word weight``:

* ``hashed`` (``linear_bow``): hashed word counts x fixed N(0, 0.5^2) weights. The weights are random per
  word, so a word the explainer never met in training has no learnable effect: this measures how well
  the preset memorises per-word effects from its training queries.
* ``embedding`` (``embedding_bow``): the weight of a word is a fixed random linear function of the frozen
  MiniLM input embedding of the word (mean over its word pieces): effects an amortized explainer can
  generalise to unseen words (its policy reads the same embeddings).

Either way the log-odds is additive over the masker's features (whitespace words), so the true effect of
word i on the explained class ``y_hat`` is ``e_i = +-(log-odds with word i - log-odds without it)`` (sign
by ``y_hat``), whatever else is kept: the Banzhaf, Shapley and leave-one-out value of the log-odds game
all equal it. A reward that increases with ``p(y_hat)`` (``prob``, ``logprob``) is a monotone function of
that game, so its values order most words the same way (exactly so for occlusion, which removes one word
at a time; the Banzhaf row is the ``prob`` value computed per input, showing what that nonlinearity costs).

Rows, on the same test snippets (>= 3 words, not all effects equal) and the same explained class
(the black box's prediction): the preset's explainer (``fex``), occlusion (FeatureAblation, F + 1
queries), the per-input Banzhaf value of ``p(y_hat)`` (``--banzhaf-masks`` masks, 0: skip), random
scores; and two bounds on what an amortized explainer can learn from per-word memory alone (the exact
effects of the words seen (twice) in its training snippets, 0 for the others; for ``hashed`` no
explainer can beat them, for ``embedding`` one that generalises can). Per snippet: Spearman (average
ranks for ties) between the scores and ``e``; the table gives the mean, its spread, the share of
snippets above 0.9, and the mean Spearman over only the words seen >= ``--min-count`` (20) times in the
training snippets (snippets with >= 3 such words, not all effects equal): it separates the memorisation
limit from how well the seen words are learned. Quality only: it does not depend on load.
Writes ``table.md`` and ``metrics.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex (and tests.text_helpers), also when another one is installed

import fex  # noqa: E402,F401  (compat shims before lightning)
import torch  # noqa: E402
from hydra.utils import get_object  # noqa: E402

from fex.bench import compose, machine  # noqa: E402
from fex.checkpoint import read_checkpoint  # noqa: E402
from fex.config import build_data  # noqa: E402
from fex.data.text import load_splits  # noqa: E402
from fex.explainer import explainer_for  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.metrics import pearson  # noqa: E402
from fex.methods.baselines import Banzhaf, FeatureAblation, Fex, RandomAttribution  # noqa: E402
from fex.tasks.train import train  # noqa: E402
from fex.tda.evaluation import spearman  # noqa: E402

BLACKBOXES = {"hashed": "tests.text_helpers.linear_bow", "embedding": "tests.text_helpers.embedding_bow"}
TRAIN_ARGS = ["trainer.enable_progress_bar=false", "gallery_size=4"]


def target_overrides(blackbox: str = "hashed") -> list[str]:
    """The Hydra overrides that make a known-answer black box (a key of :data:`BLACKBOXES`) the target."""
    return ["target=text_callable", f"target.model.path={BLACKBOXES[blackbox]}", "target.output=probs"]


def known_target(cfg):
    """The black box's model object (``cfg.target.model.path``): its ``effects`` are the answer."""
    return get_object(cfg.target.model.path)


def train_preset(experiment: str, out: Path, overrides: list[str], blackbox: str = "hashed") -> tuple:
    """Train ``experiment=<name>`` against a known-answer black box (the preset's policy, masker,
    objective and training recipe; ``overrides`` on top). Returns (cfg, metrics, objects) of
    ``fex.tasks.train.train``."""
    cfg = compose("train", [f"experiment={experiment}", *target_overrides(blackbox), f"output_dir={out}",
                            *TRAIN_ARGS, *overrides])
    return (cfg, *train(cfg))


def open_trained(experiment: str, checkpoint: Path, overrides: list[str], blackbox: str = "hashed") -> tuple:
    """An explainer this script trained earlier (``<out>/train/explainer.ckpt``), with the same experiment,
    black box and overrides: (cfg, its train_metrics.json, objects like :func:`train_preset`'s)."""
    cfg = compose("train", [f"experiment={experiment}", *target_overrides(blackbox),
                            f"output_dir={checkpoint.parent}", *TRAIN_ARGS, *overrides])
    explainer = explainer_for(cfg, read_checkpoint(checkpoint))
    metrics = json.loads((checkpoint.parent / "train_metrics.json").read_text())
    return cfg, metrics, {"explainer": explainer, "blackbox": explainer.blackbox, "datamodule": build_data(cfg.data)}


def held_out_snippets(data_cfg, masker, model, n: int, min_words: int = 3) -> list[str]:
    """The first ``n`` test-split snippets with at least ``min_words`` words (the whole split, whatever
    ``data.limit`` the training used) whose words do not all have the same effect under ``model``."""
    splits, _ = load_splits(data_cfg.source, data_cfg.cache_dir, data_cfg.val_size, data_cfg.test_size, data_cfg.seed)
    out = []
    for text in splits["test"].texts:
        words = masker.encode([text])["words"][0]  # the masker's features (after any truncation)
        if len(words) >= min_words and len(set(model.effects(words).round(9).tolist())) > 1:
            out.append(text)
        if len(out) == n:
            break
    return out


def word_counts(train_texts: list[str]) -> Counter:
    """How often each word (a masker feature: whitespace-separated) occurs in the training snippets."""
    return Counter(w for t in train_texts for w in t.split())


class SeenWordsOracle(RandomAttribution):
    """A bound, not a method: the exact effect of every word that occurs at least ``min_count`` times in
    the explainer's training snippets, 0 for the others. An amortized explainer answers without queries,
    so a word it never saw in training has no effect it could have learned from that word's rewards
    alone (with random per-word weights, from nothing at all)."""

    name = "seen_words_oracle"

    def __init__(self, blackbox, masker, model, train_texts: list[str], min_count: int = 1) -> None:
        super().__init__(blackbox, masker)
        self.model = model
        self.seen = {w for w, c in word_counts(train_texts).items() if c >= min_count}

    def attribute(self, x, target) -> torch.Tensor:
        model, valid = self.model, self.masker.valid(x).cpu()
        out = torch.zeros(valid.shape)
        for i, words in enumerate(x["words"]):
            e = torch.as_tensor(model.effects(words, int(target[i])), dtype=torch.float32)
            out[i, : len(words)] = e * torch.tensor([w in self.seen for w in words], dtype=torch.float32)
        return out


def known_answer_rows(methods: dict, blackbox, masker, texts: list[str], model, batch_size: int = 64,
                      counts: Counter | None = None, min_count: int = 20) -> list[dict]:
    """Per method: mean / std / min of the per-snippet Spearman between its word scores and the true
    effects (``model.effects``), the share of snippets >= 0.9, and its black-box queries per snippet.
    With ``counts`` (:func:`word_counts` of the training snippets), also ``spearman_frequent``: the mean
    Spearman over only the words seen >= ``min_count`` times, on the snippets with >= 3 such words whose
    effects are not all equal (``n_frequent`` of them)."""
    x_all = masker.encode(texts)
    with blackbox.uncounted():
        target = blackbox(x_all).argmax(-1)  # the explained class: the prediction, the same for every method
    rows = []
    for name, method in methods.items():
        rho, rho_frequent, q0 = [], [], blackbox.queries
        for s in range(0, len(texts), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(texts)))
            x = masker.select(x_all, idx)
            scores = method.attribute(x, target[idx]).float()
            for j, i in enumerate(idx.tolist()):
                words = x_all["words"][i]
                truth = torch.as_tensor(model.effects(words, int(target[i])))
                rho.append(spearman(scores[j, : len(words)], truth))
                if counts is None:
                    continue
                keep = torch.tensor([k for k, w in enumerate(words) if counts[w] >= min_count], dtype=torch.long)
                if len(keep) >= 3 and len(set(truth[keep].round(decimals=9).tolist())) > 1:
                    rho_frequent.append(spearman(scores[j, keep], truth[keep]))
        rows.append({"method": name, "spearman": statistics.fmean(rho), "spearman_std": statistics.pstdev(rho),
                     "spearman_min": min(rho), "share_ge_0.9": sum(r >= 0.9 for r in rho) / len(rho),
                     "spearman_frequent": statistics.fmean(rho_frequent) if rho_frequent else None,
                     "n_frequent": len(rho_frequent),
                     "queries_per_snippet": (blackbox.queries - q0) / len(texts), "n": len(rho), "per_snippet": rho})
    return rows


def share_of_frequent_words(masker, texts: list[str], counts: Counter, min_count: int = 20) -> float:
    """The share of the snippets' words (masker features) seen >= ``min_count`` times in training."""
    words = [w for ws in masker.encode(texts)["words"] for w in ws]
    return sum(counts[w] >= min_count for w in words) / len(words)


FREQ_BINS = ((0, 0), (1, 1), (2, 4), (5, 19), (20, 99), (100, None))


def by_frequency(method, blackbox, masker, texts: list[str], counts: Counter, model) -> str:
    """Where a method's word scores go wrong: Pearson and slope of score on the true effect, per bin of how
    often the word occurs in the training snippets (``counts``; a markdown table)."""
    x = masker.encode(texts)
    with blackbox.uncounted():
        target = blackbox(x).argmax(-1)
    scores = method.attribute(x, target).float()
    s, e, c = [], [], []
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


def table(rows: list[dict], min_count: int = 20) -> str:
    lines = [f"| method | mean Spearman | std | min | share >= 0.9 | mean Spearman, words seen >= {min_count} "
             "in training | queries / snippet |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['spearman']:.3f} | {r['spearman_std']:.3f} | {r['spearman_min']:.3f} | "
              f"{r['share_ge_0.9']:.2f} | {'' if r.get('spearman_frequent') is None else format(r['spearman_frequent'], '.3f')} | "
              f"{r['queries_per_snippet']:.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="text_rt", help="the preset to train (conf/experiment/<name>.yaml)")
    p.add_argument("--blackbox", default="hashed", choices=sorted(BLACKBOXES),
                   help="hashed: random per-word weights; embedding: weights linear in the word's MiniLM embedding")
    p.add_argument("--n", type=int, default=200, help="test snippets scored (>= 3 words each)")
    p.add_argument("--banzhaf-masks", type=int, default=500, help="masks per snippet of the Banzhaf row (0: skip)")
    p.add_argument("--min-count", type=int, default=20, help="the frequent-words column: words seen >= this often")
    p.add_argument("--checkpoint", default=None,
                   help="score this explainer (<out>/train/explainer.ckpt of an earlier run with the same "
                        "--experiment, --blackbox and overrides) instead of training one")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/known_text"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training run (conf/train.yaml)")
    a = p.parse_args(argv)
    out = Path(a.out)
    if a.checkpoint:
        cfg, metrics, objects = open_trained(a.experiment, Path(a.checkpoint), list(a.overrides), a.blackbox)
    else:
        cfg, metrics, objects = train_preset(a.experiment, out / "train", list(a.overrides), a.blackbox)
    explainer, bb, model = objects["explainer"], objects["blackbox"], known_target(cfg)
    masker = explainer.masker
    texts = held_out_snippets(cfg.data, masker, model, a.n)
    methods = {"fex": Fex(bb, explainer=explainer), "occlusion (FeatureAblation)": FeatureAblation(bb, masker)}
    if a.banzhaf_masks:
        methods[f"Banzhaf({a.banzhaf_masks}) of p(y_hat)"] = Banzhaf(bb, masker, n_masks=a.banzhaf_masks)
    methods["random"] = RandomAttribution(bb, masker, seed=0)
    train_texts = objects["datamodule"].dataset("train").texts
    counts = word_counts(train_texts)
    methods["bound: exact effects of words seen in training, else 0"] = SeenWordsOracle(bb, masker, model, train_texts)
    methods["bound: ... seen >= 2 times"] = SeenWordsOracle(bb, masker, model, train_texts, min_count=2)
    rows = known_answer_rows(methods, bb, masker, texts, model, counts=counts, min_count=a.min_count)
    words = masker.valid(masker.encode(texts)).sum(1).float()
    share = share_of_frequent_words(masker, texts, counts, a.min_count)
    obj = {k: v for k, v in cfg.objective.items() if k in ("estimator", "reward", "sampler", "num_samples",
                                                             "temperature", "attribution", "query_budget")}
    header = (f"Known answer on Rotten Tomatoes: experiment={a.experiment} {' '.join(a.overrides)} against the "
              f"linear bag-of-words black box `{a.blackbox}` ({BLACKBOXES[a.blackbox]}); {len(texts)} test snippets, "
              f"{words.mean():.1f} words on average (max {int(words.max())}); {share:.0%} of their words occur "
              f">= {a.min_count} times in the {len(train_texts):,} training snippets ({rows[0]['n_frequent']} "
              f"snippets have >= 3 such words: the frequent-words column); objective {obj}; "
              f"{metrics['train/queries']:,} training queries, {cfg.trainer.max_epochs} epochs; "
              f"{machine()}\n")
    text = (header + "\n" + table(rows, a.min_count)
            + "\n\nfex per word, by how often the word occurs in the training snippets:\n\n"
            + by_frequency(methods["fex"], bb, masker, texts, counts, model) + "\n")
    write_text(out / "table.md", text)
    write_json(out / "metrics.json", {"experiment": a.experiment, "blackbox": a.blackbox, "overrides": a.overrides,
                                      "objective": obj, "share_words_seen_ge_min_count": share, "min_count": a.min_count,
                                      "train": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                      "texts": texts, "rows": rows})
    print(text)
    return rows


if __name__ == "__main__":
    main()
