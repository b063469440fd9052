"""Batch attribution throughput on the data axis: 1k, 5k and 50k inputs, one process and two.

    python benchmarks/throughput.py --checkpoint outputs/scaling/train_7x7/explainer.ckpt
    python benchmarks/throughput.py --quick --out /tmp/t        # tiny smoke run

Each run is the real batch job, ``python evaluate.py`` (``fex/tasks/evaluate.py``:
``Trainer.predict`` + the resumable shard writer; ``trainer.devices=2 trainer.strategy=ddp``
for two processes), over a test split of N inputs made by *repeating* the 5,000 embedded
MNIST digits lazily (:class:`RepeatDataset`: row i is digit ``i % 5000``; nothing of size N
is ever materialised). The baselines comparison and the split-wide AUC scoring are off, so
the run is attribution only. Measured from outside each run: wall time (process start to
exit, so Python/torch start-up and, for two processes, the DDP launch are included: that is
the intercept of a straight-line fit time = a + b * N), peak resident memory of every
process of the run (``VmHWM`` from /proc, polled; the peak of the largest process also from
``wait4``), and the shard files written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fex.data.mnist import IndexedTensorDataset, MNISTDataModule, load_mnist  # noqa: E402


# --------------------------------------------------------------------------- the repeated data
class RepeatDataset(Dataset):
    """``size`` rows over ``base_x`` [n, ...] / ``base_y`` [n]: row i is (base_x[i % n], base_y[i % n], i).

    Lazy: only the base arrays are held, however large ``size`` is."""

    def __init__(self, base_x: torch.Tensor, base_y: torch.Tensor, size: int) -> None:
        self.base_x, self.base_y, self.size = base_x, base_y, int(size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        j = int(i) % len(self.base_x)
        return self.base_x[j], self.base_y[j], torch.tensor(int(i))


class RepeatedMNIST(MNISTDataModule):
    """The MNIST data module whose ``test`` split is ``size`` rows repeating all 5,000 digits."""

    def __init__(self, size: int = 1000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = int(size)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        super().setup(stage)
        x, y = load_mnist()
        self._splits["test"] = RepeatDataset(x, y, self.size)

    def dataset(self, split: str) -> IndexedTensorDataset | RepeatDataset:
        return super().dataset(split)


# --------------------------------------------------------------------------- pure helpers
def linear_fit(n: Sequence[float], t: Sequence[float]) -> dict:
    """Least-squares t = intercept + slope * n, with R^2."""
    k = len(n)
    mn, mt = sum(n) / k, sum(t) / k
    sxx = sum((a - mn) ** 2 for a in n)
    slope = sum((a - mn) * (b - mt) for a, b in zip(n, t)) / sxx if sxx else 0.0
    icpt = mt - slope * mn
    ss_tot = sum((b - mt) ** 2 for b in t)
    ss_res = sum((b - icpt - slope * a) ** 2 for a, b in zip(n, t))
    return {"slope": slope, "intercept": icpt, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


# --------------------------------------------------------------------------- measuring a run
def _proc_tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [root], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        tree += kids
        frontier = kids
    return tree


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(cmd: list[str], log_path: Path, poll_s: float = 0.2) -> dict:
    """Run ``cmd`` from the repo root; wall seconds, return code and peak RSS per process (MiB)."""
    peaks: dict[int, int] = {}
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while True:
            for pid in _proc_tree(proc.pid):
                h = _hwm_kib(pid)
                if h:
                    peaks[pid] = max(peaks.get(pid, 0), h)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(poll_s)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    python = sorted((v / 1024 for v in peaks.values() if v / 1024 > 100), reverse=True)  # ranks, not shells
    return {"returncode": proc.returncode, "seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "process_peaks_mib": python, "processes": len(python)}


def run_one(checkpoint: str, size: int, devices: int, batch_size: int, out: Path) -> dict:
    run_dir = out / f"n{size}_p{devices}"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # a fresh run, not a resume
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "evaluate.py", f"checkpoint={checkpoint}", "method=[]", "attribution.score=false",
           f"attribution.batch_size={batch_size}", "data=mnist", "data._target_=benchmarks.throughput.RepeatedMNIST",
           f"+data.size={size}", f"trainer.devices={devices}", f"hydra.run.dir={run_dir}"]
    if devices > 1:
        cmd += ["trainer.strategy=ddp", "trainer.accelerator=cpu"]
    rec = measure(cmd, run_dir / "run.log")
    shards = list((run_dir / "attributions").glob("shard-*.npz"))
    rows = 0
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        rows = int(json.loads(metrics_file.read_text()).get("attribution/rows", 0))
    npz = run_dir / "attributions.npz"
    rec.update({"size": size, "devices": devices, "batch_size": batch_size, "rows": rows, "shards": len(shards),
                "shard_mib": sum(s.stat().st_size for s in shards) / 2**20,
                "npz_mib": npz.stat().st_size / 2**20 if npz.is_file() else 0.0,
                "rows_per_s": size / rec["seconds"], "dir": str(run_dir)})
    if rec["returncode"]:
        rec["log_tail"] = (run_dir / "run.log").read_text()[-1500:]
    return rec


# --------------------------------------------------------------------------- report
def table(runs: Sequence[dict]) -> str:
    lines = ["| inputs | processes | wall s | inputs/s | shards | peak RSS MiB per process | peak RSS sum MiB "
             "| attributions.npz MiB | time vs smallest | inputs vs smallest |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in sorted({r["devices"] for r in runs}):
        mine = [r for r in runs if r["devices"] == d]
        first = mine[0]
        for r in mine:
            if r["returncode"]:
                lines.append(f"| {r['size']} | {d} | failed (rc {r['returncode']}) | | | | | | | |")
                continue
            per = " + ".join(f"{m:.0f}" for m in r["process_peaks_mib"]) or f"{r['peak_rss_mib']:.0f}"
            lines.append(f"| {r['size']} | {d} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | {r['shards']} | {per} "
                         f"| {sum(r['process_peaks_mib']):.0f} | {r['npz_mib']:.2f} | {r['seconds'] / first['seconds']:.2f}x "
                         f"| {r['size'] / first['size']:.0f}x |")
    return "\n".join(lines)


def fit_table(runs: Sequence[dict]) -> tuple[str, dict]:
    lines = ["| processes | fixed s (start-up, intercept) | ms per 1k inputs (slope) | marginal inputs/s | R^2 |",
             "|---|---|---|---|---|"]
    fits = {}
    for d in sorted({r["devices"] for r in runs}):
        ok = [r for r in runs if r["devices"] == d and not r["returncode"]]
        if len(ok) < 2:
            continue
        f = linear_fit([r["size"] for r in ok], [r["seconds"] for r in ok])
        fits[d] = f
        rate = 1 / f["slope"] if f["slope"] > 0 else float("inf")
        lines.append(f"| {d} | {f['intercept']:.1f} | {f['slope'] * 1e6:.0f} | {rate:.0f} | {f['r2']:.4f} |")
    return "\n".join(lines), fits


def plot(runs: Sequence[dict], fits: dict, path: Path) -> Path:
    from fex.render.plots import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for d in sorted({r["devices"] for r in runs}):
        ok = [r for r in runs if r["devices"] == d and not r["returncode"]]
        n = [r["size"] for r in ok]
        axes[0].plot(n, [r["seconds"] for r in ok], "o", label=f"{d} process(es)")
        if d in fits:
            f = fits[d]
            xs = [0, max(n)]
            axes[0].plot(xs, [f["intercept"] + f["slope"] * v for v in xs], "--", lw=0.8,
                         color=axes[0].lines[-1].get_color())
        axes[1].plot(n, [max(r["process_peaks_mib"] or [r["peak_rss_mib"]]) for r in ok], "o-", label=f"{d} process(es)")
    axes[0].set_ylabel("wall seconds (incl. start-up)")
    axes[1].set_ylabel("peak RSS of the largest process, MiB")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("inputs attributed")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Batch attribution (evaluate.py, 7x7 MNIST explainer, CPU): time linear, memory flat", fontsize=9)
    return save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None,
                   help="explainer to run (default: the scaling run's 7x7 one; trained briefly if missing or --quick)")
    p.add_argument("--sizes", default="1000,5000,50000")
    p.add_argument("--devices", default="1,2", help="process counts (2: trainer.strategy=ddp on CPU)")
    p.add_argument("--batch-size", type=int, default=256, help="inputs per predict batch (= per shard)")
    p.add_argument("--out", default=str(ROOT / "outputs/throughput"))
    p.add_argument("--figures", default=None, help="where the PNG goes (default: <out>)")
    p.add_argument("--quick", action="store_true", help="tiny smoke settings (numbers are meaningless)")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.devices, a.batch_size = "64,160", "1", 32
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    default = ROOT / "outputs/scaling/train_7x7/explainer.ckpt"
    ckpt = Path(a.checkpoint) if a.checkpoint else None if a.quick else default
    if ckpt is None or not ckpt.is_file():
        from fex.bench import train_explainer

        ckpt = Path(train_explainer(7, out / "train_7x7", epochs=1, val_per_epoch=1, limit=128)["checkpoint"])
    runs = []
    for d in (int(v) for v in a.devices.split(",")):
        for n in (int(v) for v in a.sizes.split(",")):
            r = run_one(str(ckpt), n, d, a.batch_size, out)
            print(f"{n} inputs, {d} process(es): {r['seconds']:.1f}s, rc {r['returncode']}, {r['shards']} shards, "
                  f"peak RSS {r['process_peaks_mib']}", flush=True)
            if r["returncode"]:
                print(r["log_tail"], flush=True)
            runs.append(r)
    import platform

    header = (f"Batch attribution with `evaluate.py` (attribution only), checkpoint {ckpt.name} "
              f"({ckpt.parent.name}), batches/shards of {a.batch_size} inputs; MNIST repeated lazily to N rows; "
              f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}."
              + (" QUICK MODE: smoke settings, numbers are not meaningful." if a.quick else ""))
    fits_md, fits = fit_table(runs)
    text = f"{header}\n\n{table(runs)}\n\nStraight-line fit, wall seconds = fixed + slope * inputs:\n\n{fits_md}\n"
    fig = plot(runs, fits, Path(a.figures or out) / "throughput.png")
    (out / "report.md").write_text(text)
    result = {"header": header, "runs": runs, "fits": fits, "files": {"throughput": str(fig)}, "quick": a.quick}
    (out / "throughput.json").write_text(json.dumps(result, indent=2, default=float))
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
