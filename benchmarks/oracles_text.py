"""Which value should fex learn on text? Per-input oracles against KernelShap(200), side by side in one run.

    python benchmarks/oracles_text.py                       # 200 test snippets, the MiniLM target
    python benchmarks/oracles_text.py --n 100 --masks 256   # cheaper
    python benchmarks/oracles_text.py --quick target=text_callable target.model.path=tests.text_helpers.planted_great target.output=probs

For each snippet (the same test snippets as ``bench_text.py``: the first ``--n`` of two or more words,
explained class = the target's prediction) the target is queried ONCE per mask set, and every reward
is computed from the same probabilities:

* mask sets: Bernoulli masks at keep rate 0.5 (pairs m, 1-m), 0.7 and 0.9, and ``uniform_t`` masks
  (a keep rate t ~ U(0,1) per mask), ``--masks`` of each;
* rewards (``fex.objective.compute_reward``): ``prob`` p(y_hat), ``logodds`` log p - log(1-p), ``logprob`` log p;
* the value of each (mask set, reward): :func:`fex.objective.regression_solution`, the least-squares
  fixed point of fex's regression objective on that input's masks (Banzhaf at the keep rate; the
  6 t (1-t) semivalue for t ~ U(0,1)); one row also gives the MSR difference of means (``banzhaf``
  method) at 1/2 for continuity with ``bench_text.py``'s oracle row;
* leave-one-out (p(full) - p(without word i); every monotone reward ranks words the same);
* KernelShap(200) (Captum, as in ``bench_text.py``) and random scores.

Every row is scored identically by ``fex.metrics.faithfulness`` (deletion / insertion AUC, ERASER
comprehensiveness and sufficiency, ...), as ``bench_text.py`` scores it; metric queries of identical
masked texts are asked once (a memo), which changes no number. Prints the table with ratios to
KernelShap and writes oracles.md / oracles.json to --out. Quality only: nothing here is timed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401  (compat shims before lightning)
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from fex import compare  # noqa: E402
from fex import metrics as M  # noqa: E402
from fex import objective as obj  # noqa: E402
from fex.methods.baselines import KernelShap, msr_difference  # noqa: E402
from fex.bench import compose, machine  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.config import build_blackbox, build_data  # noqa: E402

SAMPLERS = {"q=0.5": ("paired_uniform", 0.5), "q=0.7": ("uniform", 0.7), "q=0.9": ("uniform", 0.9),
            "t~U(0,1)": ("uniform_t", 0.5)}
REWARDS = ("prob", "logodds", "logprob")
SHOWN = ("deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency", "aopc", "faithfulness_corr")


class Memo:
    """The black box as metrics call it (a list of texts -> probs [N, C]), each distinct text queried once."""

    def __init__(self, bb) -> None:
        self.bb, self.seen, self.asked = bb, {}, 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.seen))
        if new:
            with self.bb.uncounted():
                out = self.bb(new).float().cpu()
            self.seen.update(zip(new, out))
            self.asked += len(new)
        return torch.stack([self.seen[t] for t in texts])

    def __getattr__(self, name):  # uncounted(), counting(), device ... from the black box
        return getattr(self.bb, name)


def snippets(ds, n: int) -> list[int]:
    """The benchmark's snippets: the first ``n`` test texts of two or more words (as bench_text.py)."""
    return [i for i, t in enumerate(ds.texts) if len(t.split()) >= 2][:n]


def oracle_scores(bb, masker, x: dict, cls: torch.Tensor, n_masks: int, seed: int) -> dict[str, torch.Tensor]:
    """Every oracle row's scores [B, F] for one chunk of snippets, each mask set queried once."""
    valid = masker.valid(x)
    b, f = valid.shape
    nf = valid.sum(1)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    pick = lambda p, k: p.view(b, k, -1).gather(2, cls.view(b, 1, 1).expand(b, k, 1)).squeeze(2)  # noqa: E731
    for name, (sampler, q) in SAMPLERS.items():
        masks, centre = obj.sample_coupled(torch.full((b, f), 0.5), n_masks, valid, sampler, q, gen)
        prob = pick(bb(masker.apply(x, masks)), n_masks)
        for reward in REWARDS:
            r = obj.compute_reward(prob, masks, nf, reward)
            out[f"{reward} {name}"] = obj.regression_solution(r, masks, centre, valid)
            if name == "q=0.5" and reward == "prob":
                out["prob q=0.5 (MSR)"] = torch.stack([msr_difference(r[i], masks[i]) for i in range(b)])
    # leave-one-out: mask j removes word j only
    eye = torch.eye(f).unsqueeze(0).expand(b, f, f)
    loo = valid.unsqueeze(1).float() * (1 - eye)
    p_full = pick(bb(masker.apply(x, valid.unsqueeze(1).float())), 1)
    out["leave-one-out"] = (p_full - pick(bb(masker.apply(x, loo)), f)) * valid
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="test snippets")
    p.add_argument("--masks", type=int, default=256, help="masks per snippet for each mask set (queries)")
    p.add_argument("--chunk", type=int, default=8, help="snippets per black-box round")
    p.add_argument("--kernel-shap", type=int, default=200, help="KernelShap's samples per snippet (0: skip)")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/text_oracles"))
    p.add_argument("--quick", action="store_true", help="8 snippets, 32 masks: check that it runs")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml with experiment=text_rt")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.masks, a.kernel_shap = min(a.n, 8), 32, min(a.kernel_shap, 16)
    cfg = compose("train", ["experiment=text_rt", "output_dir=.", *a.overrides])
    bb = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    masker = instantiate(cfg.masker)
    ds = build_data(cfg.data).dataset("test")
    pos = snippets(ds, a.n)
    x_all = masker.encode([ds.texts[i] for i in pos])
    memo = Memo(bb)
    t0 = time.perf_counter()
    scores: dict[str, list[torch.Tensor]] = {}
    quality: dict[str, list[dict]] = {}
    for s in range(0, len(pos), a.chunk):
        idx = torch.arange(s, min(s + a.chunk, len(pos)))
        x = masker.select(x_all, idx)
        f_all = masker.num_features(x_all)
        with bb.uncounted():
            cls = bb(x).argmax(-1).cpu()
            rows = oracle_scores(bb, masker, x, cls, a.masks, int(cfg.seed) + s)
        if a.kernel_shap:
            rows["KernelShap(%d)" % a.kernel_shap] = KernelShap(bb, masker, n_samples=a.kernel_shap,
                                                                 seed=int(cfg.seed)).attribute(x, cls)
        rows["random"] = torch.rand(rows["leave-one-out"].shape, generator=torch.Generator().manual_seed(s)) \
            * masker.valid(x)
        for name, sc in rows.items():
            q = M.faithfulness(memo, masker, x, sc.float(), cls, steps=None,
                               seed=int(cfg.seed))
            quality.setdefault(name, []).append({k: v for k, v in q.items() if k in SHOWN})
            pad = torch.zeros(sc.shape[0], f_all)
            pad[:, : sc.shape[1]] = sc
            scores.setdefault(name, []).append(pad)
        done = min(s + a.chunk, len(pos))
        print(f"{done}/{len(pos)} snippets, {time.perf_counter() - t0:.0f} s, {memo.asked} metric queries", flush=True)
        if done < len(pos):  # a partial table after every chunk: a long run can be read (or stopped) early
            report(quality, a, cfg, done, masker.valid(x_all).sum(1).float()[:done])
    table, text = report(quality, a, cfg, len(pos), masker.valid(x_all).sum(1).float())
    print(text)
    return table


def report(quality: dict, a, cfg, n: int, n_words: torch.Tensor) -> tuple[list[dict], str]:
    """The table of every row (mean and standard error over the snippets scored so far), written to --out."""
    ks = "KernelShap(%d)" % a.kernel_shap if a.kernel_shap else None
    table = []
    for name, parts in quality.items():
        row = {"method": name}
        for k in SHOWN:
            v = torch.cat([pp[k] for pp in parts])
            row[k], row[f"{k}_sem"] = float(v.mean()), float(v.std() / len(v) ** 0.5)
        table.append(row)
    ref = next((r for r in table if r["method"] == ks), None)
    lines = [f"Per-input oracles vs KernelShap on {n} test snippets ({n_words.mean():.1f} words on average), "
             f"{a.masks} masks per mask set per snippet (4 sets: {4 * a.masks} + {n_words.mean():.0f} leave-one-out "
             f"queries per snippet); target {cfg.target.model._target_}; {machine()}", "",
             "| value (reward, masks) | deletion AUC (lower better) | insertion AUC | comprehensiveness | sufficiency "
             "(lower better) | AOPC | faithfulness corr | deletion vs KS | insertion vs KS | compr. vs KS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        rat = (lambda k: f"{r[k] / ref[k]:.3f}" if ref and ref[k] else "-")  # noqa: E731
        lines.append(f"| {r['method']} | {r['deletion_auc']:.4f} ± {r['deletion_auc_sem']:.4f} | "
                     f"{r['insertion_auc']:.4f} ± {r['insertion_auc_sem']:.4f} | {r['comprehensiveness']:.4f} | "
                     f"{r['sufficiency']:.4f} | {r['aopc']:.4f} | {r['faithfulness_corr']:.3f} | "
                     f"{rat('deletion_auc')} | {rat('insertion_auc')} | {rat('comprehensiveness')} |")
    text = "\n".join(lines) + "\n\n(± standard error of the mean over snippets)\n"
    out = Path(a.out)
    write_text(out / "oracles.md", text)
    write_json(out / "oracles.json", {"n": n, "masks": a.masks, "machine": machine(),
                                      "rows": compare.json_rows(table)})
    return table, text


if __name__ == "__main__":
    main()
