"""k-means self-explanation of a CNN target (KMEx; Boubekki & Clemmensen): prototypes and concept maps.

Letters: B batch, N training inputs, D embedding size, P prototypes (k per class), C classes,
Dc channels and h w positions of a spatial block, F features.

The CNN's last linear layer is replaced, post hoc, by a nearest-prototype classifier:

1. **Fit** (once, white box): the *embedding* z(x) [D] of every training input is the input of
   the target's last ``nn.Linear`` (``layers=[head]``, the encoder output), or the flattened
   outputs of named blocks (``layers=[net.5, head]``; each block divided by its RMS norm over the
   training inputs so blocks weigh alike). For each class, scikit-learn's ``KMeans`` with ``k``
   clusters on that class's embeddings gives ``k`` centroids (prototypes), labelled by the class.
   Each prototype also keeps the *mean spatial activation* [Dc, h, w] of its members at the
   ``spatial_layer`` (the last block with a 4-D output, by default) and its *exemplar*: the
   training input nearest to the centroid (what the renderer draws for the prototype).
2. **Classify**: the class of the nearest prototype (Euclidean distance in embedding space).
3. **Explain** class y of x: its own prototype ``p`` = the nearest prototype of class y, the rival
   ``q`` = the nearest prototype of any other class. The decision margin in the spatial block,
   ``||A - S_q||^2 - ||A - S_p||^2`` (A = x's spatial activation, S = a prototype's mean spatial
   activation), is a sum over positions; its per-position terms are the **concept map** [h, w]
   (positive where x looks like its prototype rather than the rival). Spread over the input's
   pixels (nearest neighbour: each position covers its block of pixels) and averaged over each
   feature by the masker, they are the feature scores [B, F], so the method is scored like every
   other on the same features.

Cost per explanation: one forward pass of the target (counted as one query; no backward pass).
Fitting costs one forward pass per training input plus the k-means fits (no queries of the
explained inputs). A white-box method: it needs an ``nn.Module`` target with a linear head.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F_
from torch import nn
from torch.utils.data import DataLoader

from fex.methods.baselines import Method, _as_target
from fex.blackbox import BlackBox
from fex.errors import ConfigError, DataError, InputError, TargetError
from fex.maskers.base import Masker

HEAD = "head"  # the input of the model's last nn.Linear: the encoder output


# --------------------------------------------------------------------------- pure functions
def fit_prototypes(z: torch.Tensor, y: torch.Tensor, k: int, num_classes: int, n_init: int = 3,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class k-means: z [N, D], y [N] -> (centroids [P, D], their classes [P], each input's
    prototype [N]). A class with fewer than ``k`` inputs gets one prototype per input; a class with
    none gets no prototype."""
    from sklearn.cluster import KMeans  # optional third-party extra, imported where it is used

    if k < 1:
        raise ConfigError(f"kmeans_prototypes needs k >= 1 prototypes per class, got {k}")
    centers, labels = [], []
    assign = torch.full((len(y),), -1, dtype=torch.long)
    for c in range(num_classes):
        rows = (y == c).nonzero().flatten()
        if rows.numel() == 0:
            continue
        kc = min(k, rows.numel())
        km = KMeans(n_clusters=kc, n_init=n_init, random_state=seed).fit(z[rows].double().numpy())
        assign[rows] = torch.as_tensor(km.labels_, dtype=torch.long) + len(labels)
        centers.append(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        labels += [c] * kc
    if not labels:
        raise DataError("kmeans_prototypes: no training inputs to fit prototypes on")
    return torch.cat(centers), torch.tensor(labels), assign


def class_distances(d: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances to prototypes d [B, P] -> (per class the nearest prototype's distance [B, C], its index
    [B, C]); a class without prototypes gets +inf and index -1."""
    b = d.shape[0]
    dist = torch.full((b, num_classes), float("inf"), dtype=d.dtype)
    idx = torch.full((b, num_classes), -1, dtype=torch.long)
    for c in labels.unique().tolist():
        cols = (labels == c).nonzero().flatten()
        v, i = d[:, cols].min(1)
        dist[:, c], idx[:, c] = v, cols[i]
    return dist, idx


def concept_margin(a: torch.Tensor, own: torch.Tensor, rival: torch.Tensor) -> torch.Tensor:
    """Per-position terms of ``||a - rival||^2 - ||a - own||^2``: a/own/rival [B, Dc, h, w] -> [B, h, w]
    (they sum to the margin)."""
    return ((a - rival) ** 2 - (a - own) ** 2).sum(1)


# --------------------------------------------------------------------------- activations
def last_linear(model: nn.Module) -> nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise TargetError(f"kmeans_prototypes needs a CNN with a linear head; {type(model).__name__} has no nn.Linear")
    return heads[-1]


class _Taps:
    """Forward hooks that keep the outputs of named modules (and ``head``: the last linear's input)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        mods = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in dict.fromkeys(names):
            if name == HEAD:
                self.handles.append(last_linear(model).register_forward_hook(
                    lambda m, inp, out: self.out.__setitem__(HEAD, inp[0].detach())))
            elif name in mods:
                self.handles.append(mods[name].register_forward_hook(
                    lambda m, inp, out, name=name: self.out.__setitem__(name, out.detach())))
            else:
                raise ConfigError(f"kmeans_prototypes: the target has no module {name!r} "
                                  f"(some: {[n for n in mods if n][:12]})")

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module whose output is 4-D [B, Dc, h, w] on ``x`` (the last spatial block)."""
    seen: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.append(n) if torch.is_tensor(o) and o.dim() == 4
                                       else None) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise TargetError(f"kmeans_prototypes: {type(model).__name__} has no module with a spatial (4-D) output")
    return seen[-1]


# --------------------------------------------------------------------------- the method
class KMeansPrototypes(Method):
    """Nearest-prototype classifier and concept maps on a CNN target's activations (module docstring).

    Args:
        blackbox, masker: the target (an ``nn.Module``) and the features.
        data: a data module (``.setup()``, ``.dataset(split)`` of (x, y, index)): the prototypes are
            fitted on it at construction; or leave it None and call :meth:`fit` with tensors.
        split: the data split the prototypes are fitted on (``train``).
        k: prototypes per class.
        layers: embedding blocks: ``head`` (the last linear layer's input) and/or module names.
        spatial_layer: the block the concept maps come from (``auto``: the last 4-D output).
        labels: ``true`` (the data's labels) or ``predicted`` (the target's predictions) name
            each training input's class.
        n_init, seed: scikit-learn KMeans restarts and seed; ``batch_size`` rows per forward pass.
    """

    name = "kmeans_prototypes"
    needs_data = True  # evaluate/bench pass the job's data module as ``data``

    def __init__(self, blackbox: BlackBox, masker: Masker, data: Any = None, split: str = "train", k: int = 10,
                 layers: Sequence[str] = (HEAD,), spatial_layer: str = "auto", labels: str = "true",
                 n_init: int = 3, batch_size: int = 512, seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if not isinstance(self.blackbox.model, nn.Module):
            raise TargetError("kmeans_prototypes is white-box: it needs an nn.Module target with a linear head, not a "
                              f"{type(self.blackbox.model).__name__}")
        if labels not in ("true", "predicted"):
            raise ConfigError(f"kmeans_prototypes labels must be true or predicted, got {labels!r}")
        if not layers:
            raise ConfigError("kmeans_prototypes needs at least one embedding layer (e.g. layers=[head])")
        self.model: nn.Module = self.blackbox.model
        self.data, self.split, self.k, self.labels = data, split, int(k), labels
        self.layers, self.spatial_layer = [str(n) for n in layers], str(spatial_layer)
        self.n_init, self.batch_size = int(n_init), int(batch_size)
        self.num_classes = int(self.blackbox.num_classes) if getattr(self.blackbox, "num_classes", None) else None
        self.centers: torch.Tensor | None = None  # [P, D]
        self.proto_class: torch.Tensor | None = None  # [P]
        self.proto_spatial: torch.Tensor | None = None  # [P, Dc, h, w]
        self.exemplars: torch.Tensor | None = None  # [P, C, H, W]: the training input nearest each centroid
        self.scale: dict[str, float] = {}
        self.fit_info: dict = {}
        if data is not None:  # fitted now: a one-time cost, not part of any explanation's time
            self.fit(*self._training_split())

    # ------------------------------------------------------------------ activations
    def _activations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(embedding blocks [B, d_i] unscaled, spatial activation [B, Dc, h, w], logits [B, C]) in batches
        of ``batch_size``; one forward pass of the target per row."""
        if self.spatial_layer == "auto":
            self.spatial_layer = last_spatial_layer(self.model, x[:1])
        taps = _Taps(self.model, [*self.layers, self.spatial_layer])
        blocks: list[list[torch.Tensor]] = [[] for _ in self.layers]
        sp, lo = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for s in range(0, x.shape[0], self.batch_size):
                    lo.append(self.model(x[s:s + self.batch_size]).float().cpu())
                    for j, n in enumerate(self.layers):
                        blocks[j].append(taps.out[n].flatten(1).float().cpu())
                    a = taps.out[self.spatial_layer]
                    if a.dim() != 4:
                        raise ConfigError(f"kmeans_prototypes spatial_layer {self.spatial_layer!r} gives a "
                                          f"{a.dim()}-D output, not [B, Dc, h, w]")
                    sp.append(a.float().cpu())
        finally:
            taps.close()
            self.model.train(was_training)
        return [torch.cat(b) for b in blocks], torch.cat(sp), torch.cat(lo)

    def _embed(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Blocks -> the embedding [B, D]: each block divided by its training RMS norm, concatenated."""
        return torch.cat([b / self.scale.get(n, 1.0) for n, b in zip(self.layers, blocks)], 1)

    def _training_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.data, "setup"):
            self.data.setup("fit")
        ds = self.data.dataset(self.split) if hasattr(self.data, "dataset") else self.data
        xs, ys = [], []
        for batch in DataLoader(ds, batch_size=self.batch_size):
            xs.append(batch[0])
            ys.append(batch[1])
        if not xs:
            raise DataError(f"kmeans_prototypes: split {self.split!r} is empty")
        return torch.cat(xs).float(), torch.cat(ys).long()

    # ------------------------------------------------------------------ fit
    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> "KMeansPrototypes":
        """Fit the prototypes on training inputs x [N, C, H, W] with labels y [N] (``labels=predicted``:
        y may be None). One forward pass per input; no black-box queries are counted."""
        self.masker.validate(x)
        blocks, a, logits = self._activations(x)
        # several blocks: each divided by its RMS norm over the training inputs, so they weigh alike
        self.scale = ({n: float(bl.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)) for n, bl in zip(self.layers, blocks)}
                      if len(self.layers) > 1 else {})
        z = self._embed(blocks)
        c = self.num_classes or int(logits.shape[1])
        self.num_classes = c
        if self.labels == "predicted":
            y = logits.argmax(1)
        elif y is None:
            raise InputError("kmeans_prototypes.fit needs labels y (or labels=predicted)")
        y = torch.as_tensor(y).long().cpu()
        self.centers, self.proto_class, assign = fit_prototypes(z, y, self.k, c, self.n_init, self.seed)
        p = len(self.proto_class)
        self.proto_spatial = torch.stack([a[assign == j].mean(0) for j in range(p)])
        nearest = torch.cdist(self.centers, z).argmin(1)  # [P]: each centroid's nearest training input
        self.exemplars = x[nearest].detach().cpu()
        pred = self.classify(z)
        self.fit_info = {"n": int(len(y)), "prototypes": p, "k": self.k, "layers": self.layers,
                         "spatial_layer": self.spatial_layer, "dim": int(z.shape[1]), "forward_passes": int(len(y)),
                         "train_accuracy": float((pred == y).float().mean()),
                         "train_agreement": float((pred == logits.argmax(1)).float().mean())}
        return self

    def _ready(self) -> None:
        if self.centers is None:
            raise ConfigError("kmeans_prototypes has no prototypes: pass data=<data module> or call fit(x, y)")

    # ------------------------------------------------------------------ classify / explain
    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Class of the nearest prototype for embeddings z [B, D] -> [B]."""
        return self.proto_class[torch.cdist(z.float(), self.centers).argmin(1)]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The k-means classifier's classes [B] (one forward pass of the target per input)."""
        self._ready()
        blocks, _, _ = self._activations(x)
        return self.classify(self._embed(blocks))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Test accuracy of the k-means classifier beside the CNN's, and how often they agree."""
        self._ready()
        blocks, _, logits = self._activations(x)
        z = self._embed(blocks)
        pred, cnn, y = self.classify(z), logits.argmax(1), torch.as_tensor(y).long().cpu()
        return {"kmeans_accuracy": float((pred == y).float().mean()), "cnn_accuracy": float((cnn == y).float().mean()),
                "agreement": float((pred == cnn).float().mean()), "n": int(len(y))}

    def explain(self, x: torch.Tensor, target: Any = None) -> dict:
        """Per input: ``prediction`` [B] (k-means), ``target`` [B] (explained class: given, else the
        k-means prediction), ``prototype`` / ``rival`` [B] (nearest prototype of the target class / of
        any other class), ``distances`` [B, C] (to each class's nearest prototype), ``concept_map``
        [B, h, w], ``scores`` [B, F] and ``attributions`` (input shape). One forward pass (= one
        counted query) per input."""
        self.masker.validate(x)
        self._ready()
        blocks, a, _ = self._activations(x)
        z = self._embed(blocks)
        self.blackbox.queries += x.shape[0]  # one target forward pass per explanation
        b = x.shape[0]
        dist, idx = class_distances(torch.cdist(z.float(), self.centers), self.proto_class, self.num_classes)
        pred = dist.argmin(1)
        t = pred if target is None else _as_target(target, b).cpu()
        own = idx.gather(1, t.view(-1, 1)).squeeze(1)
        if (own < 0).any():
            raise InputError(f"kmeans_prototypes has no prototype of class(es) {sorted(set(t[own < 0].tolist()))}")
        others = dist.clone()
        others.scatter_(1, t.view(-1, 1), float("inf"))
        rival = idx.gather(1, others.argmin(1, keepdim=True)).squeeze(1)
        cmap = concept_margin(a, self.proto_spatial[own], self.proto_spatial[rival])  # [B, h, w]
        pix = F_.interpolate(cmap.unsqueeze(1), size=x.shape[-2:], mode="nearest")  # each position over its pixels
        scores = self.masker.pool(pix.to(x.device), x)[..., 0].float().cpu()  # [B, F]
        return {"prediction": pred, "target": t, "prototype": own, "rival": rival, "distances": dist,
                "concept_map": cmap, "scores": scores, "attributions": self.masker.expand(scores.to(x.device), x),
                "valid": self.masker.valid(x)}

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        return self.explain(x, target)["scores"]
