"""ExplainerModule: the FEX policy trained with PPO against a black box, and its inference API.

Letters: B batch, K masks per input, F features, C classes.

The black box is a plain attribute (a :class:`fex.blackbox.BlackBox`, not an ``nn.Module``)
so it never enters the state_dict, hparams, optimizer or checkpoint. The checkpoint
instead carries ``checkpoint["fex"]``: the configs that rebuild masker and policy, and
the target's fingerprint (config + weights hash), checked when loading.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from fex import objective as obj
from fex.blackbox import BlackBox, fingerprints_match
from fex.errors import CheckpointError, InputError, TargetMismatchError
from fex.maskers.base import Masker
from fex.metrics import deletion_auc

CKPT_KEY = "fex"
CKPT_VERSION = 1


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
    def explain(self, x: Any, target: Any = None, verify: Any = None) -> dict:
        """One forward pass. Returns ``scores`` [B, F] (Bernoulli means for the explained class),
        ``attributions`` (input shape), ``target`` [B], ``valid`` [B, F].

        ``target=None`` explains the black box's prediction (one query per input) if a black box
        is attached, else the policy's class head (its KL-anchored guess of the prediction).
        ``verify``: a :class:`fex.gate.Gate` (or this checkpoint's path, to load its calibrated
        ``.gate.json``) checks each explanation with a few queries and falls back to a per-instance
        method where it fails; the result then also says ``passed``/``queries``/``method`` per input.
        """
        if verify is not None:
            from fex.gate import as_gate

            return as_gate(verify).verify(self, x, target)
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

    def attribute(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Captum-style: attributions in the input's shape for ``target`` (default: the prediction)."""
        return self.explain(inputs, target)["attributions"]

    def feature_scores(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Per-feature scores [B, F] (Bernoulli keep-probabilities; padding features are 0)."""
        return self.explain(inputs, target)["scores"]

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict:
        x = batch[0]
        out = self.explain(x)
        out["index"] = batch[2] if len(batch) > 2 else None
        return out

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CKPT_KEY] = {
            "version": CKPT_VERSION,
            "config": self.config,
            "target": self.blackbox.fingerprint() if self.blackbox is not None else self._saved_fingerprint,
        }

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, target: Any = None, allow_target_mismatch: bool = False,
                        map_location: str | torch.device = "cpu") -> "ExplainerModule":
        """Rebuild an explainer from its checkpoint alone (configs inside) and attach ``target``.

        ``target`` (nn.Module, callable or BlackBox) is checked against the saved fingerprint;
        a mismatch raises :class:`TargetMismatchError` unless ``allow_target_mismatch``.
        """
        from hydra.utils import instantiate  # local: keeps `import fex` light

        ckpt = load_checkpoint_dict(path, map_location)
        meta = ckpt[CKPT_KEY]
        cfg = meta["config"]
        try:
            masker = instantiate(cfg["masker"])
            backbone = instantiate(cfg["policy"]["backbone"])
            policy = instantiate({k: v for k, v in cfg["policy"].items() if k != "backbone"}, backbone=backbone)
            objective = obj.FexObjective(**cfg.get("objective", {}))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path}: cannot rebuild the explainer from its config ({exc})") from exc
        module = cls(policy=policy, masker=masker, objective=objective, config=cfg)
        state = {k[len("policy."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
        try:
            policy.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path}: policy weights do not fit its config ({str(exc).splitlines()[0]})") from exc
        module._saved_fingerprint = meta.get("target")
        module.eval()
        if target is not None:
            bb = target if isinstance(target, BlackBox) else BlackBox(target)
            module.check_target(bb, allow_target_mismatch)
            module.attach(bb)
        return module

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
    """torch.load an fex checkpoint with one-line errors for missing/corrupt/foreign files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from exc
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an fex explainer checkpoint")
    return ckpt
