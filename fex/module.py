"""ExplainerModule: the FEX policy trained with PPO against a black box, and its inference API.

Letters: B batch, K masks per input, F features, C classes.

The black box is a plain attribute (a :class:`fex.blackbox.BlackBox`, not an ``nn.Module``)
so it never enters the state_dict, hparams, optimizer or checkpoint. The checkpoint
instead carries ``checkpoint["fex"]``: the configs that rebuild masker and policy, and
the target's fingerprint (config + weights hash), checked when loading.
"""
from __future__ import annotations

import os
import time
from functools import partial
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from fex import objective as obj
from fex.blackbox import BlackBox, fingerprints_match
from fex.errors import InputError, TargetMismatchError
from fex.maskers.base import Masker
from fex.metrics import deletion_auc

CKPT_KEY = "fex"  # ckpt["fex"]: format in fex/explainer.py


class ExplainerModule(pl.LightningModule):
    """Trains ``policy`` so that its Bernoulli means over ``masker``'s features explain ``blackbox``.

    Args:
        policy: :class:`fex.policy.Policy` (the only trainable part).
        masker: the modality's :class:`fex.maskers.base.Masker`.
        objective: :class:`fex.objective.FexObjective`.
        optimizer: ``partial(torch.optim.X, lr=...)`` bound to the policy's parameters here.
        blackbox: the target; may be attached later with :meth:`attach`.
        config: plain-dict configs (``masker``, ``policy``, ``objective``, ...) stored in the
            checkpoint so :meth:`from_checkpoint` can rebuild the explainer.
        val_auc_examples: validation examples (from the start of the val set) on which a
            deletion AUC is logged every validation (``val/deletion_auc``); 0 disables it.
    """

    def __init__(self, policy: torch.nn.Module, masker: Masker, objective: obj.FexObjective | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, blackbox: BlackBox | None = None,
                 config: dict | None = None, val_auc_examples: int = 64) -> None:
        super().__init__()
        self.policy = policy
        self.masker = masker
        self.objective = objective or obj.FexObjective()
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.config = dict(config or {})
        self.val_auc_examples = int(val_auc_examples)
        self.automatic_optimization = False
        self.blackbox: BlackBox | None = None
        self._saved_fingerprint: dict | None = None
        self._train_queries = 0
        self._val_seen = 0
        if blackbox is not None:
            self.attach(blackbox)

    # ---------------------------------------------------------------- black box
    def attach(self, blackbox: BlackBox) -> "ExplainerModule":
        if not isinstance(blackbox, BlackBox):
            blackbox = BlackBox(blackbox)
        self.blackbox = blackbox
        return self

    def _bb(self) -> BlackBox:
        if self.blackbox is None:
            raise InputError("no target attached: pass target=... when loading, or call .attach(BlackBox(model))")
        if self.blackbox.device != self.device and self.device.type != "meta":
            self.blackbox.to(self.device)
        return self.blackbox

    # ---------------------------------------------------------------- core
    def forward(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> policy logits [B, F, C] and critic values [B, C]."""
        return self.policy(x, self.masker)

    @staticmethod
    def _pick(t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Select class ``cls`` [B] along the last dim: [B, ..., C] -> [B, ...]."""
        idx = cls.reshape(-1, *([1] * (t.dim() - 1))).expand(*t.shape[:-1], 1)
        return t.gather(-1, idx).squeeze(-1)

    def _losses(self, x: Any, roll: dict, p_full: torch.Tensor, old_logp: torch.Tensor | None,
                logits: torch.Tensor | None = None, values: torch.Tensor | None = None):
        """PPO loss for the rollout's masks. Without ``old_logp`` the current policy is the sampler."""
        o = self.objective
        if logits is None:
            logits, values = self(x)
        cls, valid = roll["cls"], roll["valid"]
        cls_logits = self._pick(logits, cls)  # [B, F]
        new_logp = obj.joint_log_prob(cls_logits, roll["masks"], valid)  # [B, K]
        if old_logp is None:
            old_logp = new_logp.detach()
        actor = obj.ppo_actor_loss(new_logp, old_logp, roll["adv"], o.clip)
        critic = ((roll["rewards"] - self._pick(values, cls).unsqueeze(1)) ** 2).mean()
        entropy = obj.bernoulli_entropy(cls_logits, valid)
        kl = obj.kl_to_target(p_full, obj.class_head_log_probs(logits, valid))
        loss = o.actor_weight * actor + o.critic_weight * critic - o.entropy_weight * entropy + o.kl_weight * kl
        parts = {"actor_loss": actor, "critic_loss": critic, "entropy": entropy, "kl": kl, "loss": loss}
        return loss, parts, old_logp

    def _rollout(self, x: Any, logits: torch.Tensor, values: torch.Tensor, p_full: torch.Tensor,
                 generator: torch.Generator | None = None) -> dict:
        """Sample K masks per input, query the black box, compute rewards and advantages."""
        o, bb = self.objective, self._bb()
        cls = p_full.argmax(-1)
        valid = self.masker.valid(x)
        cls_logits = self._pick(logits.detach(), cls)
        masks = obj.sample_masks(torch.sigmoid(cls_logits), o.num_samples, valid, o.epsilon, generator)
        b, k, _ = masks.shape
        prob = self._pick(bb(self.masker.apply(x, masks)).view(b, k, -1), cls)
        extra = {}
        if o.comprehensiveness:
            comp = (1 - masks) * valid.unsqueeze(1).to(masks.dtype)
            extra = {"prob_full": self._pick(p_full, cls),
                     "prob_complement": self._pick(bb(self.masker.apply(x, comp)).view(b, k, -1), cls)}
        nf = valid.sum(1)
        rewards = obj.compute_reward(prob, masks, nf, o.reward, o.sparsity, o.comprehensiveness, **extra)
        adv = obj.advantages(rewards, self._pick(values.detach(), cls), o.baseline, o.normalize_advantage)
        return {"cls": cls, "valid": valid, "masks": masks, "prob": prob, "rewards": rewards, "adv": adv,
                "mask_frac": (masks.sum(-1) / nf.unsqueeze(1)).mean()}

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        bb = self._bb()
        q0 = bb.queries
        p_full = bb(x)  # [B, C] target softmax on the unmasked input
        logits, values = self(x)
        roll = self._rollout(x, logits, values, p_full)
        opt = self.optimizers()
        old_logp = None
        for epoch in range(self.objective.ppo_epochs):
            # the first update reuses the rollout's forward pass (it has grad)
            reuse = {"logits": logits, "values": values} if epoch == 0 else {}
            loss, parts, old_logp = self._losses(x, roll, p_full, old_logp, **reuse)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self._train_queries += bb.queries - q0
        bsz = self.masker.batch_size(x)
        log = {f"train/{k}": v.detach() for k, v in parts.items()}
        log.update({"train/prob": roll["prob"].mean(), "train/mask_frac": roll["mask_frac"]})
        self.log_dict(log, prog_bar=False, batch_size=bsz)
        self.log("train/reward", roll["rewards"].mean(), prog_bar=True, batch_size=bsz)
        self.log("train/queries", float(self._train_queries), reduce_fx="sum", sync_dist=True, batch_size=bsz)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_seen = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0]
        bb = self._bb()
        q0 = bb.queries
        p_full = bb(x)
        logits, values = self(x)
        gen = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)  # same masks every epoch
        roll = self._rollout(x, logits, values, p_full, generator=gen)
        bsz = self.masker.batch_size(x)
        metrics = {"val/reward": roll["rewards"].mean(), "val/prob": roll["prob"].mean(),
                   "val/mask_frac": roll["mask_frac"],
                   "val/kl": obj.kl_to_target(p_full, obj.class_head_log_probs(logits, roll["valid"])),
                   "val/class_agreement": (obj.class_head_log_probs(logits, roll["valid"]).argmax(-1) == roll["cls"]).float().mean()}
        self.log("val/reward", metrics.pop("val/reward"), prog_bar=True, batch_size=bsz, sync_dist=True)
        self.log_dict(metrics, prog_bar=False, batch_size=bsz, sync_dist=True)
        take = min(bsz, self.val_auc_examples - self._val_seen)
        if take > 0:
            idx = torch.arange(take, device=roll["cls"].device)
            xs = self.masker.select(x, idx)
            scores = torch.sigmoid(self._pick(logits.detach()[:take], roll["cls"][:take]))
            d = deletion_auc(bb, self.masker, xs, scores, roll["cls"][:take], steps=min(20, scores.shape[1]))
            self.log("val/deletion_auc", d.mean(), batch_size=take, sync_dist=True)
            self._val_seen += take
        bb.queries = q0  # validation queries are not training cost

    def on_validation_epoch_end(self) -> None:
        # quality against training cost: lets a user see how many queries a target needs
        self.log("val/train_queries", float(self._train_queries), reduce_fx="sum", sync_dist=True)

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.parameters())

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def explain(self, x: Any, target: Any = None) -> dict:
        """One forward pass. Returns ``scores`` [B, F] (Bernoulli means for the explained class),
        ``attributions`` (input shape), ``target`` [B], ``valid`` [B, F].

        ``target=None`` explains the black box's prediction (one query per input) if a black box
        is attached, else the policy's class head (its KL-anchored guess of the prediction).
        """
        self.masker.validate(x)
        was_training = self.training
        self.eval()
        try:
            logits, _ = self(x)
        finally:
            self.train(was_training)
        valid = self.masker.valid(x)
        b = logits.shape[0]
        cls = self._resolve_target(x, target, logits, valid)
        scores = torch.sigmoid(self._pick(logits, cls)) * valid.to(logits.dtype)
        return {"scores": scores, "attributions": self.masker.expand(scores, x), "target": cls, "valid": valid,
                "num_features": valid.sum(1)} if b else {}

    def _resolve_target(self, x: Any, target: Any, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, c = logits.shape[0], logits.shape[-1]
        if target is None:
            if self.blackbox is not None:
                return self._bb()(x).argmax(-1).to(logits.device)
            return obj.class_head_log_probs(logits, valid).argmax(-1)
        t = torch.as_tensor(target, device=logits.device).long().flatten()
        if t.numel() == 1:
            t = t.expand(b)
        if t.numel() != b:
            raise InputError(f"target has {t.numel()} entries for a batch of {b}")
        if (t < 0).any() or (t >= c).any():
            raise InputError(f"target class out of range 0..{c - 1}: {t.tolist()}")
        return t

    @property
    def class_names(self) -> list[str]:
        """Names of the target's classes (from the data, saved in the checkpoint), else ``"0".."C-1"``."""
        names = self.config.get("class_names")
        return list(names) if names else [str(i) for i in range(int(self.policy.num_classes))]

    def attribute(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Captum-style: attributions in the input's shape for ``target`` (default: the prediction)."""
        return self.explain(inputs, target)["attributions"]

    def feature_scores(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Per-feature scores [B, F] (Bernoulli keep-probabilities; padding features are 0)."""
        return self.explain(inputs, target)["scores"]

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """One row per input: the black box's prediction and its probability (one query per input),
        the explanation of that class, and what the explanation alone cost (``seconds`` per row;
        ``peak_mem_mib`` on a job's first batch, else NaN). Evaluation reuses all of it."""
        x = batch[0]
        self.masker.validate(x)
        probs = self._bb()(x) if self.blackbox is not None else None
        target = probs.argmax(-1) if probs is not None else None
        mem = float("nan")
        if batch_idx == 0:
            from fex.compare import PeakMemory

            with PeakMemory() as pm:
                t0 = time.perf_counter()
                out = self.explain(x, target)
                dt = time.perf_counter() - t0
            mem = pm.mib
        else:
            t0 = time.perf_counter()
            out = self.explain(x, target)
            dt = time.perf_counter() - t0
        if not out:
            return out
        b = out["target"].shape[0]
        out["probability"] = (probs.gather(1, out["target"].to(probs.device)[:, None]).squeeze(1) if probs is not None
                              else torch.full((b,), float("nan")))
        out["seconds"] = torch.full((b,), dt / b)
        out["peak_mem_mib"] = torch.full((b,), mem)
        out["index"] = batch[2] if len(batch) > 2 else None
        return out

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from fex.explainer import CKPT_KEY, checkpoint_meta

        checkpoint[CKPT_KEY] = checkpoint_meta(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming training (``Trainer.fit(ckpt_path=...)``): the query count goes on from the checkpoint's."""
        from fex.explainer import CKPT_KEY

        self._train_queries = int(checkpoint.get(CKPT_KEY, {}).get("train_queries") or 0)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, target: Any = None, allow_target_mismatch: bool = False,
                        map_location: str | torch.device = "cpu") -> "ExplainerModule":
        """Rebuild an explainer from its checkpoint alone; see :func:`fex.explainer.load_explainer`."""
        from fex.explainer import load_explainer

        return load_explainer(path, target=target, allow_target_mismatch=allow_target_mismatch,
                              map_location=map_location)

    def check_target(self, bb: BlackBox, allow_mismatch: bool = False) -> None:
        saved = self._saved_fingerprint
        if saved is None:
            return
        ok, why = fingerprints_match(saved, bb.fingerprint())
        if not ok and not allow_mismatch:
            raise TargetMismatchError(
                f"this explainer was trained against a different target: {why}; "
                "pass allow_target_mismatch=True (CLI: allow_target_mismatch=true) to use it anyway")


def load_checkpoint_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The checkpoint dict (read once, checked); see :func:`fex.explainer.read_checkpoint`."""
    from fex.explainer import read_checkpoint

    return read_checkpoint(path, map_location)
