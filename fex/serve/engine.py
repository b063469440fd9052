"""The model side of the server: canonical requests (see :mod:`fex.serve.parse`) -> JSON-ready results.

Letters: N inputs, F features, C classes, H W pixels.

One :class:`Engine` holds a loaded explainer with its black box. ``explain_many`` takes the
requests of one dynamic batch and runs every FEX input of the batch in one forward pass (plus one
black-box query per input for the prediction and its probability); inputs that ask for a
per-instance method (``feature_ablation``, ``kernel_shap``) run it one by one on the same features.
A request that still fails here (a text the masker refuses, say) becomes an :class:`ItemError` for
that request only; the rest of the batch is answered.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import torch

from fex.config import build_data
from fex.errors import FexError
from fex.methods import METHODS
from fex.metrics import auc, perturbation_curve
from fex.serve.parse import decode_pixels

log = logging.getLogger("fex.serve")


class ItemError:
    """A per-request failure inside a batch: HTTP ``status`` and one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = int(status)
        self.reason = (str(reason).splitlines() or ["error"])[0][:300]

    def __repr__(self) -> str:
        return f"ItemError({self.status}, {self.reason!r})"


def gate_verdicts(engine: "Engine", x: Any, out: dict) -> list[dict] | None:
    """The trust gate's verdict per input (``fex.gate``, calibrated for this checkpoint), else None.

    The gate spends its own black-box queries (``1 + 2J`` per input for the contrast statistic, at most
    ``1 + J`` for the deletion ones, which stop as soon as the verdict is certain); they are reported in
    the verdict, not in the explanation's ``queries``; a two-stage contrast gate (``early_alpha``) stops
    after its first removal pair where it can. A verdict: ``passed``, ``statistic`` (for a deletion statistic
    that stopped early, the bound that decided it; for an early pass, the first pair's term), ``threshold``,
    ``queries``, ``early`` (passed after the first stage), ``target_changed`` (the gate's target probe says the
    model behind the explainer is not the calibrated one: every verdict fails). The probe's own queries, asked
    once per target, are added to the first verdict of the request that asked them."""
    gate = engine.gate
    if gate is None:
        return None
    try:
        thr = gate.thresholds(x, out["target"])  # [B]
        chk = gate.check(out["scores"], x, out["target"], thr if gate.sequential else None)
    except FexError as exc:
        log.warning("trust gate failed: %s", exc)
        return None
    early = chk.get("early", torch.zeros(len(thr), dtype=torch.bool))  # a gate of one stage may not say
    queries = chk["queries"].clone()
    queries[:1] += int(chk.get("probe_queries", 0))
    changed = bool(chk.get("target_changed", False))
    return [{"passed": bool(e) or float(s) >= float(t), "statistic": round(float(s), 5) if math.isfinite(s) else None,
             "threshold": round(float(t), 5), "queries": int(q), "early": bool(e), "target_changed": changed}
            for s, t, q, e in zip(chk["statistic"].tolist(), thr, queries, early)]


def _floats(t: torch.Tensor, digits: int = 6) -> list:
    return torch.round(t.detach().cpu().double(), decimals=digits).tolist()  # short JSON numbers


class Engine:
    """Explain, compare and build a gallery with one explainer (black box attached).

    Args:
        explainer: a loaded :class:`fex.module.ExplainerModule` with its black box.
        config: the checkpoint's configs (``data`` is used for the gallery).
        kernel_shap_samples: KernelShap coalitions per explanation (= queries).
        curve_steps: points on deletion/insertion curves (at most F).
        class_names: names of the classes (default: their indices).
        gate: the trust gate (see :func:`gate_verdicts`), or None.
    """

    def __init__(self, explainer: Any, config: dict | None = None, kernel_shap_samples: int = 200,
                 curve_steps: int = 20, class_names: list[str] | None = None, gate: Any = None) -> None:
        self.explainer = explainer
        self.blackbox = explainer.blackbox
        self.masker = explainer.masker
        self.config = dict(config or {})
        self.modality = "text" if hasattr(self.masker, "encode") else "image"
        self.kernel_shap_samples = int(kernel_shap_samples)
        self.curve_steps = int(curve_steps)
        self.class_names = list(class_names) if class_names else None
        self.gate = gate  # a calibrated fex.gate.Gate (``check(scores, x, target)``, ``threshold``) or None
        self._gallery: dict | None = None
        self._datamodule: Any = None

    # ------------------------------------------------------------------ inputs
    def name(self, c: int) -> str:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else str(c)

    def to_inputs(self, texts_or_x: Any) -> tuple[Any, list[bool]]:
        """Images [N, C, H, W] stay; texts are encoded. Returns (x, truncated flags)."""
        if self.modality == "image":
            return texts_or_x, [False] * int(texts_or_x.shape[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = self.masker.encode(list(texts_or_x))
        if not caught:
            return x, [False] * len(x["words"])
        return x, [len(w) < len(str(t).split()) for w, t in zip(x["words"], texts_or_x)]

    @staticmethod
    def raw_inputs(body: dict) -> Any:
        if body["kind"] == "image":
            return torch.from_numpy(decode_pixels(body).copy())
        return list(body["texts"])

    # ------------------------------------------------------------------ explain
    def _result(self, x: Any, i: int, scores: torch.Tensor, cls: int, probs: torch.Tensor, want_map: bool,
                truncated: bool, method: str, queries: int, time_ms: float, verdict: Any = None,
                attributions: torch.Tensor | None = None, batch: int = 1) -> dict:
        pred = int(probs[i].argmax())
        res = {"method": method, "class": cls, "label": self.name(cls), "probability": float(probs[i, cls]),
               "predicted_class": pred, "predicted_label": self.name(pred),
               "predicted_probability": float(probs[i, pred]), "queries": int(queries),
               "time_ms": round(float(time_ms), 4)}
        if self.modality == "image":
            res["scores"] = _floats(scores[i])
            res["grid"] = list(self.masker.grid)
            if want_map:
                a = attributions[i] if attributions is not None else self.masker.expand(scores[i:i + 1], x[i:i + 1])[0]
                res["map"] = _floats(a[0])  # [H, W] (every channel carries the same feature score)
        else:
            n = len(x["words"][i])
            res["words"] = list(x["words"][i])
            res["scores"] = _floats(scores[i, :n])
            res["truncated"] = bool(truncated)
        res["verdict"] = verdict
        res["batch"] = int(batch)
        return res

    def _fex(self, x: Any, targets: list[int | None], want_maps: list[bool], truncated: list[bool]) -> list[dict]:
        """One policy forward pass (and one black-box query per input) for N inputs."""
        t0 = time.perf_counter()
        probs = self.blackbox(x)  # [N, C]
        t = probs.argmax(-1)
        for i, v in enumerate(targets):
            if v is not None:
                t[i] = int(v)
        out = self.explainer.explain(x, target=t)
        dt = (time.perf_counter() - t0) * 1e3 / max(1, len(targets))
        verdicts = gate_verdicts(self, x, out) or [None] * len(targets)
        return [self._result(x, i, out["scores"], int(t[i]), probs, want_maps[i], truncated[i], "fex", 1, dt,
                             verdicts[i], out["attributions"] if self.modality == "image" else None, len(targets))
                for i in range(len(targets))]

    def method(self, name: str) -> Any:
        """A per-instance method a request asked for (one of :data:`fex.serve.parse.METHODS`), from the registry."""
        if name not in METHODS or name == "fex":
            raise FexError(f"unknown method {name!r}")
        kwargs = {"n_samples": self.kernel_shap_samples} if name == "kernel_shap" else {}
        return METHODS[name](self.blackbox, self.masker, **kwargs)

    def _per_instance(self, name: str, x: Any, target: int | None, want_map: bool, truncated: bool) -> dict:
        """A per-instance method on one input (batch of 1), timed, with its queries counted."""
        t0 = time.perf_counter()
        with self.blackbox.counting() as c:
            probs = self.blackbox(x)
            cls = int(probs[0].argmax()) if target is None else int(target)
            scores = self.method(name).attribute(x, torch.tensor([cls]))
        dt = (time.perf_counter() - t0) * 1e3
        return self._result(x, 0, scores, cls, probs, want_map, truncated, name, c.n, dt)

    def explain_many(self, bodies: list[dict]) -> list[Any]:
        """Canonical request bodies of one batch -> one result (or :class:`ItemError`) per body.

        A body with ``n`` inputs gets a dict for one input, or ``{"explanations": [...]}`` for several."""
        results: list[Any] = [None] * len(bodies)
        per_input: list[list[dict | None]] = [[None] * int(b["n"]) for b in bodies]
        fex_items = []  # (body index, raw inputs) of FEX requests, run together
        for j, b in enumerate(bodies):
            try:
                raw = self.raw_inputs(b)
                if b.get("method", "fex") == "fex":
                    fex_items.append((j, raw))
                    continue
                for k in range(int(b["n"])):
                    xk, tr = self.to_inputs(raw[k:k + 1])
                    tk = None if b.get("target") is None else b["target"][k]
                    per_input[j][k] = self._per_instance(b["method"], xk, tk, bool(b.get("map", True)), tr[0])
            except FexError as exc:
                results[j] = ItemError(422, str(exc))
            except Exception as exc:  # noqa: BLE001 - one request must not sink the batch
                log.exception("explain failed")
                results[j] = ItemError(500, f"internal error ({type(exc).__name__})")
        if fex_items:
            self._run_fex(bodies, fex_items, per_input, results)
        for j, b in enumerate(bodies):
            if results[j] is None:
                results[j] = per_input[j][0] if int(b["n"]) == 1 else {"explanations": per_input[j]}
        return results

    def _run_fex(self, bodies: list[dict], items: list[tuple[int, Any]], per_input: list, results: list) -> None:
        """The FEX requests of a batch in one pass. If the pass fails, each request runs alone, so a request
        that cannot be explained fails alone (422 for a refused input, 500 for anything else), never its batch."""
        try:
            if self.modality == "image":
                x, truncated = torch.cat([raw for _, raw in items]), None
            else:
                x, truncated = self.to_inputs([t for _, raw in items for t in raw])
            targets, maps, j_of = [], [], []
            for j, raw in items:
                b = bodies[j]
                for k in range(int(b["n"])):
                    targets.append(None if b.get("target") is None else b["target"][k])
                    maps.append(bool(b.get("map", True)))
                    j_of.append((j, k))
            out = self._fex(x, targets, maps, truncated or [False] * len(targets))
        except Exception as exc:  # noqa: BLE001 - one request must not sink the batch
            if len(items) > 1:
                for it in items:
                    self._run_fex(bodies, [it], per_input, results)
                return
            if isinstance(exc, FexError):
                results[items[0][0]] = ItemError(422, str(exc))
            else:
                log.exception("explain failed")
                results[items[0][0]] = ItemError(500, f"internal error ({type(exc).__name__})")
            return
        for (j, k), r in zip(j_of, out):
            per_input[j][k] = r

    # ------------------------------------------------------------------ compare (the page)
    def curves(self, x: Any, scores: torch.Tensor, cls: int) -> dict:
        steps = max(1, min(self.curve_steps, int(self.masker.valid(x).sum(1).max())))
        t = torch.tensor([cls])
        with self.blackbox.uncounted():  # measuring is not the method's cost
            d = perturbation_curve(self.blackbox, self.masker, x, scores, t, "deletion", steps)
            ins = perturbation_curve(self.blackbox, self.masker, x, scores, t, "insertion", steps)
        return {"deletion": _floats(d[0], 5), "insertion": _floats(ins[0], 5),
                "deletion_auc": round(float(auc(d)[0]), 5), "insertion_auc": round(float(auc(ins)[0]), 5)}

    def compare(self, body: dict) -> dict:
        """FEX and a per-instance method side by side on one input, each with time, queries and curves."""
        if int(body["n"]) != 1:
            return ItemError(422, "compare takes one input")
        name = body.get("method") or "fex"
        if name == "fex":
            name = "kernel_shap"
        try:
            x, tr = self.to_inputs(self.raw_inputs(body))
            tgt = None if body.get("target") is None else body["target"][0]
            fx = self._fex(x, [tgt], [True], tr)[0]
            fx["queries"] = 1
            other = self._per_instance(name, x, fx["class"], True, tr[0])
        except FexError as exc:
            return ItemError(422, str(exc))
        for res in (fx, other):
            res.update(self.curves(x, torch.tensor([res["scores"] + [0.0] * (self.masker.num_features(x) - len(res["scores"]))]),
                                   res["class"]))
        return {"fex": fx, "method": other,
                "speedup": round(other["time_ms"] / fx["time_ms"], 2) if fx["time_ms"] > 0 else None}

    # ------------------------------------------------------------------ gallery
    def datamodule(self) -> Any:
        if self._datamodule is None:
            if not self.config.get("data"):
                raise FexError("this checkpoint stores no data config, so there is no test split to show")
            self._datamodule = build_data(self.config["data"])
            names = getattr(self._datamodule, "label_names", None)
            if names and not self.class_names:
                self.class_names = [str(n) for n in names]
        return self._datamodule

    def gallery(self, n: int) -> dict:
        """The first ``n`` test-split inputs: explanation, true label, deletion/insertion curves and AUCs."""
        if self._gallery is not None and len(self._gallery["items"]) >= n:
            return {**self._gallery, "items": self._gallery["items"][:n]}
        ds = self.datamodule().dataset("test")
        n = min(int(n), len(ds))
        rows = [ds[i] for i in range(n)]
        raw = torch.stack([r[0] for r in rows]) if self.modality == "image" else [str(r[0]) for r in rows]
        x, tr = self.to_inputs(raw)
        res = self._fex(x, [None] * n, [True] * n, tr)
        items = []
        for i, r in enumerate(res):
            xi = x[i:i + 1] if self.modality == "image" else self.masker.select(x, torch.tensor([i]))
            f = self.masker.num_features(xi)
            s = torch.zeros(1, f)
            s[0, :len(r["scores"])] = torch.tensor(r["scores"])
            r.update(self.curves(xi, s, r["class"]))
            r["index"] = int(rows[i][2]) if len(rows[i]) > 2 else i
            r["true_label"] = self.name(int(rows[i][1]))
            if self.modality == "image":
                r["image"] = _floats(raw[i].permute(1, 2, 0) if raw.shape[1] == 3 else raw[i, 0], 4)
            items.append(r)
        mean = {k: round(sum(r[k] for r in items) / len(items), 5) for k in ("deletion_auc", "insertion_auc")}
        steps = len(items[0]["deletion"]) if items else 0
        avg = {k: [round(sum(r[k][s] for r in items) / len(items), 5) for s in range(steps)]
               for k in ("deletion", "insertion")} if items and all(len(r["deletion"]) == steps for r in items) else None
        self._gallery = {"split": "test", "items": items, "mean": mean, "mean_curves": avg}
        return self._gallery

