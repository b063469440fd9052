"""Feature interactions with SPEX / ProxySPEX (Kang et al., ICML 2025; Butler et al., NeurIPS 2025).

Letters: B batch, F features, n valid features of one example, N coalitions (queries).

The black box of one example is the game ``v(S) = p(target | masker keeps only S)`` over its
``n`` valid features (:meth:`fex.methods.baselines.Method.presence_fn`: the same features, masker and
counted black box as every other method). The maintained implementation in ``shapiq``
(``pip install fex[interactions]``) samples structured coalitions and decodes a sparse Fourier
transform (SPEX), or fits boosted trees on uniform coalitions and reads their Fourier
coefficients (ProxySPEX). We take its Möbius transform ``m(T)`` (the game is
``v(S) = sum_{T ⊆ S} m(T)``) and derive

* interaction attributions up to ``max_order`` in the configured ``index`` (``FSII``, ``SII``,
  ``STII``, ``k-SII``, ``FBII``; shapiq's ``MoebiusConverter``), and
* per-feature Shapley values ``phi_i = sum_{T ∋ i} m(T) / |T|`` (efficient: they sum to
  ``v(all) - v(none)`` for the recovered game), which :meth:`attribute` returns as ``[B, F]`` so the
  method enters the same deletion/insertion tables as every other.

When ``2**n <= budget`` the game is enumerated exactly (shapiq's ``ExactComputer``; ``2**n``
queries), so short inputs get exact answers for fewer queries than the budget.
The decoders run inside ``threadpoolctl.threadpool_limits(threads)`` (lightgbm and
scikit-learn already use one job); numba threads are set to ``threads`` too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fex.blackbox import BlackBox
from fex.errors import InputError
from fex.maskers.base import Masker
from fex.methods.baselines import Method

ALGORITHMS = ("spex", "proxyspex")
INDICES = ("FSII", "SII", "STII", "k-SII", "FBII")


def shapley_from_moebius(moebius: dict[tuple[int, ...], float], n: int) -> np.ndarray:
    """Shapley values [n] of the game with Möbius transform ``moebius``: phi_i = sum_{T ∋ i} m(T)/|T|."""
    phi = np.zeros(n)
    for t, v in moebius.items():
        if len(t):
            phi[list(t)] += float(v) / len(t)
    return phi


def _shapiq():
    try:
        import shapiq  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("method spex needs the interactions extra: pip install 'fex[interactions]'") from exc
    return shapiq


class SpexInteractions(Method):
    """SPEX / ProxySPEX interactions through the masker; ``attribute`` returns Shapley values [B, F].

    Args:
        budget: black-box queries per explanation (SPEX may use fewer: its sampling design
            rounds down; exact enumeration uses ``2**n`` when that is within the budget).
        max_order: highest interaction order reported (``interactions``).
        index: interaction index of the reported interactions (``FSII`` by default: on a game
            of degree <= ``max_order`` it equals the Möbius transform, i.e. the planted terms).
        algorithm: ``spex`` (sparse Fourier decoding) or ``proxyspex`` (boosted-tree proxy).
        decoder: SPEX's BCH decoder, ``soft`` or ``hard``.
        degree: SPEX's degree parameter t (soft limit on the decoded interaction order).
        top_k: interactions (order >= 2) kept per explanation in :attr:`last` / :meth:`explain`.
        proxy_grid: optional override of ProxySPEX's lightgbm grid search (dict of lists).
        threads: thread cap for the decoders (BLAS/OpenMP/numba).
    """

    name = "spex"

    def __init__(self, blackbox: BlackBox, masker: Masker, budget: int = 1000, max_order: int = 2,
                 index: str = "FSII", algorithm: str = "spex", decoder: str = "soft", degree: int = 5,
                 top_k: int = 10, proxy_grid: dict | None = None, threads: int = 1, exact_if_possible: bool = True,
                 seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if algorithm not in ALGORITHMS:
            raise InputError(f"spex algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if index not in INDICES:
            raise InputError(f"spex index must be one of {INDICES}, got {index!r}")
        if int(max_order) < 1 or int(budget) < 1:
            raise InputError(f"spex needs max_order >= 1 and budget >= 1, got {max_order} and {budget}")
        _shapiq()
        self.budget, self.max_order, self.index = int(budget), int(max_order), index
        self.algorithm, self.decoder, self.degree = algorithm, decoder, int(degree)
        self.top_k, self.threads, self.exact_if_possible = int(top_k), int(threads), bool(exact_if_possible)
        self.proxy_grid = None if proxy_grid is None else {k: list(v) for k, v in dict(proxy_grid).items()}
        self.last: list[dict] = []

    # ------------------------------------------------------------------ one example
    def _moebius(self, game, n: int) -> tuple[dict, str]:
        """Möbius transform {tuple of local feature positions: coefficient} and how it was found."""
        from shapiq.game_theory.exact import ExactComputer

        if self.exact_if_possible and 2 ** n <= self.budget:
            mo = ExactComputer(game, n_players=n).moebius_transform  # a property (shapiq 1.4)
            return {tuple(int(i) for i in k): float(v) for k, v in mo.dict_values.items()}, "exact"
        from shapiq.approximator import SPEX, ProxySPEX

        if self.algorithm == "spex":
            approx = SPEX(n=n, index=self.index, max_order=self.max_order, random_state=self.seed,
                          decoder_type=self.decoder, degree_parameter=self.degree)
        else:
            approx = ProxySPEX(n=n, index=self.index, max_order=self.max_order, random_state=self.seed)
            if self.proxy_grid:
                approx.decoder_args = dict(self.proxy_grid)
        captured: dict = {}
        convert = approx._process_moebius  # the decoded Möbius transform passes through here (shapiq 1.4)

        def keep(moebius_transform):
            captured.update(moebius_transform)
            return convert(moebius_transform=moebius_transform)

        approx._process_moebius = keep
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # the peeling decoder divides by empty bins
                approx.approximate(self.budget, game)
        except ValueError as exc:
            if "Insufficient budget" not in str(exc):
                raise
            raise InputError(f"spex budget {self.budget} is too small for {n} features (SPEX's sampling design needs "
                             "more; about 320 at 49 features, 870 for its default degree 5): raise the budget or use "
                             "proxyspex") from None
        return {tuple(int(i) for i in k): float(v) for k, v in captured.items()}, self.algorithm

    def _index_values(self, moebius: dict, n: int) -> dict[tuple[int, ...], float]:
        from shapiq.game_theory.moebius_converter import MoebiusConverter
        from shapiq.interaction_values import InteractionValues

        keys = list(moebius)
        mo = InteractionValues(values=np.array([moebius[k] for k in keys], dtype=float), index="Moebius",
                               min_order=0, max_order=n, n_players=n,
                               interaction_lookup={k: i for i, k in enumerate(keys)}, estimated=True,
                               baseline_value=moebius.get((), 0.0))
        iv = MoebiusConverter(mo)(index=self.index, order=min(self.max_order, n))
        return {tuple(int(i) for i in k): float(v) for k, v in iv.dict_values.items()}

    def explain_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> dict:
        """Shapley values [n], interactions (global feature ids) and the queries spent, for one example."""
        from threadpoolctl import threadpool_limits

        n = idx.numel()
        g = self.presence_fn(x, target, idx, f)

        def game(coalitions: np.ndarray) -> np.ndarray:
            z = torch.from_numpy(np.asarray(coalitions, dtype=np.float32).reshape(-1, n))
            return g(z).double().numpy()

        with self.blackbox.counting() as c, threadpool_limits(self.threads), _numba_threads(self.threads):
            moebius, how = self._moebius(game, n)
            values = self._index_values(moebius, n)
        ids = idx.tolist()
        inter = {tuple(ids[i] for i in k): v for k, v in values.items() if len(k) >= 2}
        top = dict(sorted(inter.items(), key=lambda kv: -abs(kv[1]))[: self.top_k])
        phi = shapley_from_moebius(moebius, n)
        return {"shapley": torch.as_tensor(phi, dtype=torch.float32), "interactions": top,
                "moebius": {tuple(ids[i] for i in k): v for k, v in moebius.items()},
                "queries": c.n, "solver": how, "baseline_value": moebius.get((), 0.0)}

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        rec = self.explain_one(x, target, idx, f)
        self.last.append(rec)
        return rec["shapley"]

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        self.last = []
        return super().attribute(x, target)

    def explain(self, x: Any, target: Any) -> dict:
        """``scores`` [B, F] (Shapley values) plus per example ``interactions`` (top ``top_k`` of order
        >= 2, feature ids -> value), ``moebius`` and ``queries``."""
        scores = self.attribute(x, target)
        return {"scores": scores, "interactions": [r["interactions"] for r in self.last],
                "moebius": [r["moebius"] for r in self.last], "queries": [r["queries"] for r in self.last],
                "solver": [r["solver"] for r in self.last]}


class ProxySpexInteractions(SpexInteractions):
    """ProxySPEX: ``SpexInteractions(algorithm="proxyspex")`` (boosted-tree proxy on uniform coalitions)."""

    name = "proxyspex"

    def __init__(self, blackbox: BlackBox, masker: Masker, budget: int = 1000, **kw: Any) -> None:
        kw.setdefault("algorithm", "proxyspex")
        super().__init__(blackbox, masker, budget=budget, **kw)


class _numba_threads:
    """Cap numba's thread pool inside the block (no-op without numba)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        try:
            import numba

            self.old = numba.get_num_threads()
            numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        except Exception:  # noqa: BLE001 - numba missing or already configured
            self.old = None

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            import numba

            numba.set_num_threads(self.old)
