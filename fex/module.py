"""ExplainerModule: the FEX policy trained against a black box with the objective's estimator (PPO,
REINFORCE, FastSHAP or the regression fit, :mod:`fex.objective`), its inference API, and
:func:`load_explainer`, which rebuilds one from its checkpoint.

Letters: B batch, K masks per input, F features, C classes.

The black box is a plain attribute (a :class:`fex.blackbox.BlackBox`, not an ``nn.Module``)
so it never enters the state_dict, hparams, optimizer or checkpoint. The checkpoint
instead carries ``checkpoint["fex"]`` (:mod:`fex.checkpoint`): the configs that rebuild masker,
policy and objective, and the target's fingerprint (config + weights hash), checked when loading.
"""
from __future__ import annotations

import os
import time
from functools import partial
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from fex import objective as obj
from fex.bank import REWARD_KEYS, RewardBank, data_identity
from fex.blackbox import BlackBox, check_num_classes, fingerprints_match
from fex.checkpoint import (BANK_KEY, CKPT_KEY, assemble, build_component, check_features, checkpoint_meta,
                            read_checkpoint)
from fex.cost import PeakMemory
from fex.errors import CheckpointError, ConfigError, InputError, TargetMismatchError
from fex.inputs import class_index
from fex.maskers.base import Masker
from fex.metrics import deletion_auc, insertion_auc


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
                 config: dict | None = None, val_auc_examples: int = 64,
                 scheduler: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.scheduler_factory = scheduler  # partial(torch.optim.lr_scheduler.X, ...): stepped once per epoch
        self.policy = policy
        self.masker = masker
        self.objective = objective or obj.FexObjective()
        if int(getattr(policy, "heads", 1)) > 1 and self.objective.estimator in ("ppo", "reinforce"):
            raise ConfigError(f"policy heads={policy.heads} needs objective.estimator=regression or fastshap: "
                              f"{self.objective.estimator}'s gradient assumes each head sampled the masks itself, "
                              "and the heads share one rollout")
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.config = dict(config or {})
        self.val_auc_examples = int(val_auc_examples)
        self.automatic_optimization = False
        self.blackbox: BlackBox | None = None
        self._saved_fingerprint: dict | None = None
        self._train_queries = 0
        self._val_seen = 0
        self._bank = None  # fex.bank.RewardBank when objective.query_budget > 0 (in training checkpoints only)
        self._bank_gen: torch.Generator | None = None  # draws the banked masks (apart from the global stream)
        if blackbox is not None:
            self.attach(blackbox)

    #: How ``explain(verify=<checkpoint path>)`` opens that checkpoint's calibrated trust gate. The gate
    #: (:mod:`fex.gate`) sits above the explainer, since it runs the per-instance methods; importing it
    #: installs ``Gate.load`` here (``import fex`` does, before any fex module is used).
    gate_loader: Callable[[str | os.PathLike], Any] | None = None

    # ---------------------------------------------------------------- black box
    def attach(self, blackbox: BlackBox) -> "ExplainerModule":
        if not isinstance(blackbox, BlackBox):
            blackbox = BlackBox(blackbox)
        check_num_classes(blackbox, int(self.policy.num_classes))  # every path, allow_target_mismatch or not
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
        """The objective's loss for the rollout's masks. Without ``old_logp`` the current policy is the sampler."""
        o = self.objective
        if logits is None:
            logits, values = self(x)
        cls, valid, masks = roll["cls"], roll["valid"], roll["masks"]
        cls_logits = self._pick(logits, cls)  # [B, F]
        value = self._pick(values, cls)  # [B]
        kl = obj.kl_to_target(p_full, obj.class_head_log_probs(logits, valid))
        parts: dict[str, torch.Tensor] = {"kl": kl}
        if o.estimator == "ppo":
            new_logp = obj.joint_log_prob(cls_logits, masks, valid)  # [B, K]
            if old_logp is None:
                old_logp = new_logp.detach()
            actor = obj.ppo_actor_loss(new_logp, old_logp, roll["adv"], o.clip)
            critic = ((roll["rewards"] - value.unsqueeze(1)) ** 2).mean()
            entropy = obj.bernoulli_entropy(cls_logits, valid)
            loss = o.actor_weight * actor + o.critic_weight * critic - o.entropy_weight * entropy + o.kl_weight * kl
            parts.update(actor_loss=actor, critic_loss=critic, entropy=entropy)
        elif o.estimator == "reinforce":
            if o.sampler == "antithetic":
                actor = obj.disarm_loss(cls_logits, masks, roll["rewards"], valid)
            else:
                actor = obj.reinforce_loss(cls_logits, masks, roll["adv"], valid)
            critic = ((roll["rewards"] - value.unsqueeze(1)) ** 2).mean()
            entropy = obj.entropy_sum(cls_logits, valid)
            loss = actor + o.critic_weight * critic - o.temperature * entropy + o.kl_weight * kl
            parts.update(actor_loss=actor, critic_loss=critic, entropy=entropy)
        elif o.estimator == "fastshap":
            fit = obj.fastshap_loss(o.temperature * cls_logits, roll["rewards"], masks, roll["r_empty"],
                                    roll["r_full"], valid)
            loss = fit + o.kl_weight * kl
            parts.update(fit_loss=fit)
        else:  # regression: the entropy-regularised gradient with a per-feature linear control variate
            fit = obj.regression_loss(o.temperature * cls_logits, value, roll["rewards"], masks, roll["centre"], valid)
            loss = fit + o.kl_weight * kl
            parts.update(fit_loss=fit, entropy=obj.bernoulli_entropy(cls_logits, valid))
        parts["loss"] = loss
        return loss, parts, old_logp

    def _rollout(self, x: Any, logits: torch.Tensor, values: torch.Tensor, p_full: torch.Tensor,
                 generator: torch.Generator | None = None) -> dict:
        """Sample K masks per input, query the black box, compute rewards (and advantages)."""
        o = self.objective
        cls = p_full.argmax(-1)
        valid = self.masker.valid(x)
        probs = torch.sigmoid(self._pick(logits.detach(), cls))
        if o.estimator == "ppo":
            masks = obj.sample_masks(probs, o.num_samples, valid, o.epsilon, generator)
            centre = probs.unsqueeze(1).expand_as(masks)
        else:
            masks, centre = obj.sample_coupled(probs, o.num_samples, valid, o.sampler, o.keep_rate, generator)
        prob, rewards = self._query(x, masks, valid, cls, p_full)
        roll = {"cls": cls, "valid": valid, "masks": masks, "centre": centre, "prob": prob, "rewards": rewards,
                **self._ends(x, valid, cls, p_full)}
        return self._finish(roll, values, probs)

    def _query(self, x: Any, masks: torch.Tensor, valid: torch.Tensor, cls: torch.Tensor,
               p_full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-class probabilities [B, K] of the masked inputs and their rewards [B, K]."""
        o, bb = self.objective, self._bb()
        b, k, _ = masks.shape
        prob = self._pick(bb(self.masker.apply(x, masks)).view(b, k, -1), cls)
        extra = {}
        if o.needs_complement:
            comp = (1 - masks) * valid.unsqueeze(1).to(masks.dtype)
            extra = {"prob_full": self._pick(p_full, cls),
                     "prob_complement": self._pick(bb(self.masker.apply(x, comp)).view(b, k, -1), cls)}
        return prob, obj.compute_reward(prob, masks, valid.sum(1), o.reward, o.sparsity, o.comprehensiveness, **extra)

    def _ends(self, x: Any, valid: torch.Tensor, cls: torch.Tensor, p_full: torch.Tensor) -> dict:
        """FastSHAP's efficiency constraint: rewards of the empty and the full input (one extra query)."""
        o = self.objective
        if not o.needs_empty:
            return {}
        b, f = valid.shape
        empty = self._pick(self._bb()(self.masker.apply(x, torch.zeros(b, 1, f, device=valid.device))), cls)
        ends = torch.stack([empty, self._pick(p_full, cls)], 1)  # [B, 2]
        ends = obj.compute_reward(ends, torch.zeros(b, 2, f, device=valid.device), valid.sum(1), o.reward)
        return {"r_empty": ends[:, 0], "r_full": ends[:, 1]}

    def _finish(self, roll: dict, values: torch.Tensor, probs: torch.Tensor) -> dict:
        o, valid, masks, nf = self.objective, roll["valid"], roll["masks"], roll["valid"].sum(1)
        roll["adv"] = None
        if o.estimator in ("ppo", "reinforce"):
            roll["adv"] = obj.advantages(roll["rewards"], self._pick(values.detach(), roll["cls"]), o.baseline,
                                         o.normalize_advantage)
        roll["mask_frac"] = (masks.sum(-1) / nf.unsqueeze(1)).mean()
        roll["policy_frac"] = (probs * valid).sum(-1).div(nf).mean()
        return roll

    def _banked_rollout(self, x: Any, batch: Any, logits: torch.Tensor, values: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Like :meth:`_rollout` but off-policy masks are queried once per input (up to ``query_budget``) and
        reused from the :class:`~fex.bank.RewardBank` afterwards. Returns (rollout, p_full)."""
        o = self.objective
        if len(batch) < 3:
            raise InputError("objective.query_budget needs (x, y, index) batches to key the reward bank")
        keys = [int(i) for i in torch.as_tensor(batch[2]).flatten().tolist()]
        if self._bank is None:
            self._bank = RewardBank(o.query_budget, paired=self._paired())
        bank, dev = self._bank, logits.device
        valid = self.masker.valid(x)
        if not bank.known(keys):
            p_new = self._bb()(x)
            bank.remember(keys, p_full=p_new, **self._ends(x, valid, p_new.argmax(-1), p_new))
        p_full = bank.recall(keys, "p_full", dev)
        cls = p_full.argmax(-1)
        probs = torch.sigmoid(self._pick(logits.detach(), cls))
        if bank.room(keys) > 0:
            # their own stream (seeded by the run's seed): a run started from this bank (objective.bank_from)
            # then draws the same global random numbers, and trains the same, as the run that queried it
            if self._bank_gen is None or self._bank_gen.device != dev:
                self._bank_gen = torch.Generator(device=dev).manual_seed(torch.initial_seed() + self.global_rank)
            fresh, _ = obj.sample_coupled(probs, o.num_samples, valid, o.sampler, o.keep_rate, self._bank_gen)
            bank.add(keys, fresh, self._query(x, fresh, valid, cls, p_full)[1], valid.sum(1))
        masks, rewards = bank.sample(keys, o.num_samples, valid.shape[1], dev, logits.dtype)
        masks = masks * valid.unsqueeze(1).to(masks.dtype)
        centre = torch.full_like(masks, 0.5 if o.sampler == "paired_uniform" else
                                 (0.0 if o.sampler == "shapley_kernel" else o.keep_rate))
        roll = {"cls": cls, "valid": valid, "masks": masks, "centre": centre, "rewards": rewards}
        if o.needs_empty:
            roll.update(r_empty=bank.recall(keys, "r_empty", dev), r_full=bank.recall(keys, "r_full", dev))
        return self._finish(roll, values, probs), p_full

    def _paired(self) -> bool:
        return self.objective.sampler in ("paired_uniform", "shapley_kernel")

    def bank_from(self, path: str | os.PathLike) -> RewardBank:
        """The reward bank of an earlier run's training checkpoint (``<run>/checkpoints/best.ckpt`` or
        ``last.ckpt``), read with :func:`~fex.checkpoint.read_checkpoint` (tensors and plain data only) and
        fitted to this run's ``query_budget`` (:meth:`RewardBank.resize`). Refused with one line where its
        rewards cannot be this run's: another target (fingerprint), other data (its config but
        ``batch_size``/``num_workers``: the bank is keyed by dataset index), another masker or class count,
        another reward or sampler (:data:`fex.bank.REWARD_KEYS`), or no bank in the file."""
        ckpt = read_checkpoint(path)
        where = f"objective.bank_from={ckpt['_path']}"
        meta, state = ckpt[CKPT_KEY], ckpt.get(BANK_KEY)
        if state is None:
            raise CheckpointError(f"{where} holds no reward bank: name a training checkpoint of a run with "
                                  "objective.query_budget > 0 (<run>/checkpoints/best.ckpt or last.ckpt)")
        saved_fp = meta.get("target")
        ok, why = (False, "it records no target fingerprint") if saved_fp is None else \
            fingerprints_match(saved_fp, self._bb().fingerprint())
        if not ok:
            raise TargetMismatchError(f"{where}: its rewards come from another target: {why}")
        saved, mine = meta["config"], self.config
        sd, d = (data_identity(c.get("data")) for c in (saved, mine))
        if not saved.get("data") or sd != d:
            diff = sorted(k for k in set(sd) | set(d) if sd.get(k) != d.get(k))
            raise CheckpointError(f"{where}: its bank is keyed by the indices of other data ("
                                  + ", ".join(f"data.{k}: {sd.get(k)!r} there, {d.get(k)!r} here" for k in diff)
                                  + "); a sweep over seed keeps the data with data.seed=<the bank's>")
        for key in ("masker", "num_classes"):
            if saved.get(key) != mine.get(key):
                raise CheckpointError(f"{where}: its masks are of another {key} ({saved.get(key)!r}, here "
                                      f"{mine.get(key)!r})")
        try:
            theirs = build_component("objective", saved.get("objective") or {})
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        o = self.objective
        for key in REWARD_KEYS:
            if getattr(theirs, key) != getattr(o, key):
                raise CheckpointError(f"{where}: its rewards are of objective.{key}={getattr(theirs, key)!r}, this "
                                      f"run's is {getattr(o, key)!r}")
        bank = RewardBank.from_state(state, where)
        if bank.paired != self._paired():
            raise CheckpointError(f"{where}: its bank's masks are {'' if bank.paired else 'not '}paired, this run's "
                                  f"sampler={o.sampler} needs them {'' if self._paired() else 'un'}paired")
        return bank.resize(o.query_budget)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        bb = self._bb()
        heads = int(getattr(self.policy, "heads", 1))
        with bb.counting() as spent:
            if heads > 1:  # one rollout (from the heads' mean) that every head fits on its own
                head_logits, head_values = self.policy.forward_heads(x, self.masker)
                logits, values = head_logits.mean(0), head_values.mean(0)
            else:
                logits, values = self(x)
            if self.objective.query_budget:
                roll, p_full = self._banked_rollout(x, batch, logits, values)
            else:
                p_full = bb(x)  # [B, C] target softmax on the unmasked input
                roll = self._rollout(x, logits, values, p_full)
        opt = self.optimizers()
        old_logp = None
        for epoch in range(self.objective.ppo_epochs if self.objective.estimator == "ppo" else 1):
            if heads > 1:  # the sum of the heads' losses: each head's gradient is its own loss's
                per_head = [self._losses(x, roll, p_full, None, logits=head_logits[h], values=head_values[h])
                            for h in range(heads)]
                loss = torch.stack([lh for lh, _, _ in per_head]).sum()
                parts = {k: torch.stack([ph[k] for _, ph, _ in per_head]).mean() for k in per_head[0][1]}
            else:
                # the first update reuses the rollout's forward pass (it has grad)
                reuse = {"logits": logits, "values": values} if epoch == 0 else {}
                loss, parts, old_logp = self._losses(x, roll, p_full, old_logp, **reuse)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        self._train_queries += spent.n
        bsz = self.masker.batch_size(x)
        log = {f"train/{k}": v.detach() for k, v in parts.items()}
        log.update({"train/mask_frac": roll["mask_frac"], "train/policy_frac": roll["policy_frac"]})
        if "prob" in roll:  # banked rollouts keep rewards, not the probabilities behind them
            log["train/prob"] = roll["prob"].mean()
        self.log_dict(log, prog_bar=False, batch_size=bsz)
        self.log("train/reward", roll["rewards"].mean(), prog_bar=True, batch_size=bsz)
        self.log("train/queries", float(self._train_queries), reduce_fx="sum", sync_dist=True, batch_size=bsz)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_seen = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Reward statistics on fixed masks, and faithfulness (deletion / insertion AUC of the read-out
        scores) on the first ``val_auc_examples`` inputs. No query here counts as training cost."""
        x = batch[0]
        bb = self._bb()
        with bb.uncounted():
            p_full = bb(x)
            logits, values = self(x)
            gen = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)  # same masks every epoch
            roll = self._rollout(x, logits, values, p_full, generator=gen)
            bsz = self.masker.batch_size(x)
            head = obj.class_head_log_probs(logits, roll["valid"])
            metrics = {"val/prob": roll["prob"].mean(), "val/mask_frac": roll["mask_frac"],
                       "val/policy_frac": roll["policy_frac"], "val/kl": obj.kl_to_target(p_full, head),
                       "val/class_agreement": (head.argmax(-1) == roll["cls"]).float().mean()}
            self.log("val/reward", roll["rewards"].mean(), prog_bar=True, batch_size=bsz, sync_dist=True)
            self.log_dict(metrics, prog_bar=False, batch_size=bsz, sync_dist=True)
            take = min(bsz, self.val_auc_examples - self._val_seen)
            if take > 0:
                idx = torch.arange(take, device=roll["cls"].device)
                xs = self.masker.select(x, idx)
                cls = roll["cls"][:take]
                scores = self.read_out(logits.detach()[:take], cls, roll["valid"][:take])
                steps = min(20, scores.shape[1])
                d = deletion_auc(bb, self.masker, xs, scores, cls, steps=steps)
                i = insertion_auc(bb, self.masker, xs, scores, cls, steps=steps)
                self.log("val/deletion_auc", d.mean(), batch_size=take, sync_dist=True)
                self.log("val/insertion_auc", i.mean(), batch_size=take, sync_dist=True)
                self.log("val/faithfulness", (i - d).mean(), prog_bar=True, batch_size=take, sync_dist=True)
                self._val_seen += take

    def on_fit_start(self) -> None:
        """``objective.bank_from``: start from an earlier run's reward bank (its queries are not paid again;
        ``train/queries`` counts only this run's). A resumed run (its own bank restored) keeps its own."""
        if self._bank is None and self.objective.query_budget and self.objective.bank_from:
            self._bank = self.bank_from(self.objective.bank_from)

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        # quality against training cost: lets a user see how many queries (and how long) a target needs
        self.log("val/train_queries", float(self._train_queries), reduce_fx="sum", sync_dist=True)
        if getattr(self, "_fit_start", None) is not None:  # wall seconds since fit start (validations included)
            self.log("val/train_seconds", time.perf_counter() - self._fit_start, reduce_fx="max")

    def configure_optimizers(self):
        groups = self.policy.param_groups() if hasattr(self.policy, "param_groups") else [
            {"params": [q for q in self.policy.parameters() if q.requires_grad], "lr_scale": 1.0}]
        opt = self.optimizer_factory([g for g in groups if g["params"]])
        for g in opt.param_groups:  # before the scheduler records each group's initial lr
            g["lr"] = g["lr"] * g.pop("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.scheduler_factory(opt)}

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()  # manual optimisation: Lightning does not step it for us
        if sched is not None:
            sched.step()

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def explain(self, x: Any, target: Any = None, verify: Any = None) -> dict:
        """One forward pass. Returns ``scores`` [B, F] (the read-out for the explained class: Bernoulli means
        or tau * logits, see :meth:`read_out`),
        ``attributions`` (input shape), ``target`` [B], ``valid`` [B, F].

        ``target=None`` explains the black box's prediction (one query per input) if a black box
        is attached, else the policy's class head (its KL-anchored guess of the prediction).
        ``verify``: a :class:`fex.gate.Gate` (or this checkpoint's path, to load its calibrated
        ``.gate.json``) checks each explanation with a few queries and falls back to a per-instance
        method where it fails; the result then also says ``passed``/``queries``/``method`` per input.
        """
        if verify is not None:
            return self._verifier(verify).verify(self, x, target)
        x = self.masker.prepare(x)  # validated; float64 cast to float32
        logits = self.policy_logits(x)
        valid = self.masker.valid(x)
        b = logits.shape[0]
        cls = self._resolve_target(x, target, logits, valid)
        scores = self.read_out(logits, cls, valid)
        return {"scores": scores, "attributions": self.masker.expand(scores, x), "target": cls, "valid": valid,
                "num_features": valid.sum(1)} if b else {}

    def _verifier(self, verify: Any) -> Any:
        """``explain(verify=...)``: a gate (anything with ``verify(explainer, x, target)``) or a checkpoint path."""
        if hasattr(verify, "verify"):
            return verify
        if isinstance(verify, (str, os.PathLike)) and ExplainerModule.gate_loader is not None:
            return ExplainerModule.gate_loader(verify)
        raise InputError(f"verify must be a fex.gate.Gate or a checkpoint path, got {type(verify).__name__}")

    @torch.no_grad()
    def policy_logits(self, x: Any) -> torch.Tensor:
        """The policy's logits [B, F, C] in eval mode (the module's train/eval mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            return self(x)[0]
        finally:
            self.train(was_training)

    def read_out(self, logits: torch.Tensor, cls: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-feature scores [B, F] for class ``cls`` [B] from logits [B, F, C]: ``attribution=prob`` gives
        pi = sigmoid(theta) (the paper), ``logit`` gives tau * theta (reward units); padding features are 0."""
        theta = self._pick(logits, cls)
        o = self.objective
        scores = torch.sigmoid(theta) if o.attribution == "prob" else o.temperature * theta
        return scores * valid.to(scores.dtype)

    def _resolve_target(self, x: Any, target: Any, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, c = logits.shape[0], logits.shape[-1]
        if target is None:
            if self.blackbox is not None:
                return self._bb()(x).argmax(-1).to(logits.device)
            if not self.objective.kl_weight:
                raise InputError("this explainer has no trained class head (objective.kl_weight=0): pass target=... "
                                 "or attach the black box (target=model when loading)")
            return obj.class_head_log_probs(logits, valid).argmax(-1)
        return class_index(target, b, c, device=logits.device)  # 2.7 refused, not truncated

    @property
    def class_names(self) -> list[str]:
        """Names of the target's classes (from the data, saved in the checkpoint), else ``"0".."C-1"``."""
        names = self.config.get("class_names")
        return list(names) if names else [str(i) for i in range(int(self.policy.num_classes))]

    def attribute(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Captum-style: attributions in the input's shape for ``target`` (default: the prediction)."""
        return self.explain(inputs, target)["attributions"]

    def feature_scores(self, inputs: Any, target: Any = None) -> torch.Tensor:
        """Per-feature scores [B, F] (see :meth:`read_out`; padding features are 0)."""
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
        checkpoint[CKPT_KEY] = checkpoint_meta(self)

        if self._bank is not None:  # a training checkpoint: resuming must not pay for banked queries again
            checkpoint[BANK_KEY] = self._bank.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming training (``Trainer.fit(ckpt_path=...)``): the query count and the reward bank go on
        from the checkpoint's."""
        self._train_queries = int(checkpoint.get(CKPT_KEY, {}).get("train_queries") or 0)
        state = checkpoint.get(BANK_KEY)
        if state is not None:
            self._bank = RewardBank.from_state(state, "the resumed checkpoint")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, target: Any = None, allow_target_mismatch: bool = False,
                        map_location: str | torch.device = "cpu") -> "ExplainerModule":
        """Rebuild an explainer from its checkpoint alone; see :func:`load_explainer`."""
        return load_explainer(path, target=target, allow_target_mismatch=allow_target_mismatch,
                              map_location=map_location)

    def check_target(self, bb: BlackBox, allow_mismatch: bool = False) -> None:
        saved = self._saved_fingerprint
        if saved is None:
            ok, why = False, "the checkpoint has no target fingerprint"
        else:
            ok, why = fingerprints_match(saved, bb.fingerprint())
        if not ok and not allow_mismatch:
            raise TargetMismatchError(
                f"this explainer was trained against a different target: {why}; "
                "pass allow_target_mismatch=True (CLI: allow_target_mismatch=true) to use it anyway")


def load_explainer(source: str | os.PathLike | dict, target: Any = None, allow_target_mismatch: bool = False,
                   map_location: Any = "cpu"):
    """Rebuild an explainer from its checkpoint alone (a path, or the dict of :func:`read_checkpoint`)
    and attach ``target`` (nn.Module, callable or BlackBox), checked against the saved fingerprint:
    a mismatch raises :class:`~fex.errors.TargetMismatchError` unless ``allow_target_mismatch``."""
    ckpt = source if isinstance(source, dict) else read_checkpoint(source, map_location)
    path, meta = ckpt.get("_path", "<checkpoint>"), ckpt[CKPT_KEY]
    cfg = meta["config"]
    try:
        masker, policy, objective = assemble(cfg)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path}: cannot rebuild the explainer from its config ({first})") from exc
    module = ExplainerModule(policy=policy, masker=masker, objective=objective, config=cfg)
    state = {k[len("policy."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: policy weights do not fit its config ({str(exc).splitlines()[0]})") from exc
    check_features(meta, masker, path)  # a stored grid that disagrees with what the policy was trained on
    module._saved_fingerprint = meta.get("target")
    module._train_queries = int(meta.get("train_queries") or 0)
    module.eval()
    if target is not None:
        bb = target if isinstance(target, BlackBox) else BlackBox(target)
        module.check_target(bb, allow_target_mismatch)
        module.attach(bb)
    return module
