"""The distillation unit: batch -> EGAD (or baseline) loss, for the generic loop.

One optimizer step is two phases:
  plan  (no grad): teacher pass over all micro-batches of the step, per-token statistics,
        policies (difficulty u, curriculum weights w, temperatures τ, hard tokens), and the
        global denominators Σw (all micro-batches, all ranks);
  loss  (per micro-batch): student pass and the chunked loss, divided by those global sums,
        so gradient accumulation over k micro-batches equals one k-times larger batch.

  L = Σ_i w_i (τ_i² D(p_i^τ ‖ q_i^τ) + μ·1[i hard]·φ_i) / Σ_i w_i  +  α·CE
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from egad_cli.config.schema import DistillConfig
from egad_cli.engine.runtime import Runtime
from egad_cli.losses import FeatureProjectors, chunked_distill_loss, chunked_token_stats, default_layer_map
from egad_cli.policies import (
    LATF,
    Curriculum,
    eakd_weights,
    hard_token_mask,
    make_difficulty,
    make_temperature,
    top_ratio_mask,
)


def temperature_kwargs(cfg) -> dict:
    """Only the fields each temperature policy takes (the registry rejects others)."""
    if cfg.name == "fixed":
        return {"base": cfg.base}
    if cfg.name == "entropy":
        return {"base": cfg.base, "kappa": cfg.kappa, "t_min": cfg.t_min, "t_max": cfg.t_max}
    return {"base": cfg.base, "c": cfg.c, "t_min": cfg.t_min, "t_max": cfg.t_max}


def shift(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Position t predicts token t+1: targets [B*(L-1)] and valid [B*(L-1)] (target is a loss token)."""
    return ids[:, 1:].reshape(-1), mask[:, 1:].reshape(-1)


def flat(h: Tensor) -> Tensor:
    """[B, L, D] hidden states at the predicting positions -> [B*(L-1), D]."""
    return h[:, :-1].reshape(-1, h.shape[-1])


@dataclass
class MicroPlan:
    ids: Tensor  #: [B, L]
    targets: Tensor  #: [N] next-token ids (N = B*(L-1))
    valid: Tensor  #: [N] bool
    t_hidden: Tensor | None  #: [N, Dt] teacher final hidden states
    tau: Tensor  #: [N] per-token temperature
    coef: Tensor  #: [N] kd_weight · w_i / Σw (0 on invalid / unselected tokens)
    ce_coef: Tensor  #: [N] α / n_valid on valid tokens
    hard_idx: Tensor  #: [M] positions of hard tokens (dual branch)
    feat_coef: Tensor  #: [M] kd_weight · μ · w_i / Σw for those tokens
    t_states: list[Tensor]  #: per layer pair, [M, Dt] teacher states at the hard positions


@dataclass
class StepPlan:
    micro: list[MicroPlan]
    logs: dict[str, float]


class TrainModules(nn.Module):
    """Everything trained: the student and (dual branch) the projectors. Checkpointed together;
    only the student is exported. forward returns the student's hidden states (not its logits)."""

    def __init__(self, student: nn.Module, projectors: FeatureProjectors | None):
        super().__init__()
        self.student = student
        self.projectors = projectors

    def forward(self, ids: Tensor, output_hidden_states: bool = False):
        return self.student.base_model(input_ids=ids, output_hidden_states=output_hidden_states, use_cache=False)


class DistillUnit:
    def __init__(self, teacher: nn.Module, student: nn.Module, vocab_size: int, cfg: DistillConfig,
                 runtime: Runtime, total_steps: int):
        self.cfg, self.runtime, self.vocab = cfg, runtime, vocab_size
        self.teacher = teacher
        m = cfg.method
        self.difficulty = make_difficulty(m.difficulty, vocab_size)
        c = cfg.curriculum
        self.curriculum = Curriculum(c.schedule, c.mode, c.rho, c.gamma, c.c0, c.n_stages)
        self.temperature = make_temperature(cfg.temperature.name, **temperature_kwargs(cfg.temperature))
        self.latf = LATF(total_steps, m.adakd_r0, m.adakd_beta, m.adakd_warmup_frac, m.adakd_eps, m.adakd_delta,
                         m.adakd_r_min) if m.weighting == "adakd" else None
        self.dual = cfg.branch.name == "dual"
        projectors = None
        if self.dual:
            self.layer_map = default_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers,
                                               cfg.branch.n_pairs)
            # Seeded, independent of the global RNG (whose state here depends on what ran before): a run
            # is reproducible from its config, the projectors' initialisation included.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.trainer.seed)
                projectors = FeatureProjectors(student.config.hidden_size, teacher.config.hidden_size,
                                               self.layer_map)
        self.train_modules = TrainModules(student, projectors).to(runtime.device)
        self.model = self.train_modules  # what runs forward (DDP-wrapped under strategy=ddp)
        if runtime.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(self.train_modules)
        # Which statistics the step needs: the student pass in `plan` only runs when a policy reads it.
        self.needs_student_stats = m.weighting in ("eakd", "adakd") or cfg.temperature.name == "idts"
        self.needs_teacher = m.kd_weight > 0 or self.dual
        self.use_ce = m.ce_weight > 0  # without it the chunked loss skips the CE term and its gradient buffers

    # -- the loop's interface ---------------------------------------------------------------

    def named_trainable(self):
        mult = self.cfg.branch.projector_lr_mult
        return [(n, p, mult if n.startswith("projectors.") else 1.0)
                for n, p in self.train_modules.named_parameters()]

    def modules(self) -> dict[str, nn.Module]:
        return {"train_modules": self.train_modules}

    @property
    def student(self) -> nn.Module:
        return self.train_modules.student

    def head(self, model: nn.Module) -> Tensor:
        """lm_head weight sliced to the shared vocabulary: [V, D]."""
        return model.get_output_embeddings().weight[: self.vocab]

    def plan(self, micro_batches: list[dict], progress: float) -> StepPlan:
        cfg, m = self.cfg, self.cfg.method
        parts = [self._teacher_pass(mb) for mb in micro_batches]
        sizes = [p["valid"].numel() for p in parts]
        valid = torch.cat([p["valid"] for p in parts])  # [N_step]
        stats = {k: torch.cat([p["stats"][k] for p in parts]) for k in parts[0]["stats"]}
        entropy = stats.get("teacher_entropy@1", torch.zeros_like(valid, dtype=torch.float32))
        u = self.difficulty(entropy, valid)  # [N_step] in [0, 1]
        w = self.curriculum.weights(u, valid, progress)
        if m.weighting == "eakd":
            w = w * eakd_weights(stats[f"teacher_entropy@{m.eakd_temperature:g}"],
                                 stats[f"student_entropy@{m.eakd_temperature:g}"], valid, self.vocab)
        if m.weighting == "adakd":
            w = w * top_ratio_mask(stats["hellinger"], valid, self.latf.ratio).float()
        tau = self.temperature(n=valid.numel(), u=u, hellinger=stats.get("hellinger"), valid=valid)
        hard = hard_token_mask(u, valid, cfg.branch.q) if self.dual else torch.zeros_like(valid)
        # Global denominators: all micro-batches of this step, all ranks.
        sums = torch.stack([w.sum() if m.weight_norm == "sum_w" else valid.sum().float(), valid.sum().float()])
        w_total, n_valid = self.runtime.all_reduce_sum(sums.double()).clamp_min(1e-12).tolist()
        coef = (m.kd_weight / w_total) * w
        ce_coef = (m.ce_weight / n_valid) * valid.float()
        micro = []
        for p, mb_coef, mb_ce, mb_tau, mb_hard, mb_w in zip(parts, coef.split(sizes), ce_coef.split(sizes),
                                                              tau.split(sizes), hard.split(sizes), w.split(sizes)):
            idx = mb_hard.nonzero().squeeze(1)  # [M]
            micro.append(MicroPlan(
                ids=p["ids"], targets=p["targets"], valid=p["valid"], t_hidden=p["t_hidden"], tau=mb_tau,
                coef=mb_coef, ce_coef=mb_ce, hard_idx=idx,
                feat_coef=(m.kd_weight * cfg.branch.mu / w_total) * mb_w[idx],
                t_states=[s[idx].clone() for s in p["t_states"]]))
        n = valid.sum().clamp_min(1)
        logs = {"tau_mean": float((tau * valid).sum() / n), "weight_mean": float((w * valid).sum() / n),
                "hard_frac": float((hard & valid).sum() / n), "entropy_mean": float((entropy * valid).sum() / n)}
        if self.latf is not None:
            logs["adakd_ratio"] = self.latf.ratio
        return StepPlan(micro, logs)

    def loss(self, plan: StepPlan, index: int) -> tuple[Tensor, dict[str, float]]:
        mp = plan.micro[index]
        out = self.model(mp.ids, output_hidden_states=self.dual)
        s_hidden = flat(out.last_hidden_state)  # [N, Ds]
        t_hidden, t_head = mp.t_hidden, (self.head(self.teacher) if mp.t_hidden is not None else None)
        if t_hidden is None:  # plain fine-tuning: no teacher; coef is all 0, so this only makes shapes line up
            t_hidden, t_head = s_hidden.detach(), self.head(self.student).detach()
        loss_logit, loss_ce = chunked_distill_loss(
            s_hidden, self.head(self.student), t_hidden, t_head, mp.tau, mp.coef,
            divergence=self.cfg.loss.name, beta=self.cfg.loss.beta, alpha=self.cfg.loss.alpha,
            labels=mp.targets if self.use_ce else None, ce_coef=mp.ce_coef if self.use_ce else None,
            chunk_size=self.cfg.loss.chunk_size)
        loss_feature = torch.zeros((), device=s_hidden.device)
        if self.dual and mp.hard_idx.numel() > 0:
            s_states = [flat(out.hidden_states[ls])[mp.hard_idx] for ls, _ in self.layer_map]  # [M, Ds] each
            phi = self.train_modules.projectors(s_states, mp.t_states, self.cfg.branch.feature_loss)  # [M]
            loss_feature = (mp.feat_coef * phi).sum()
        loss = loss_logit + loss_feature + loss_ce
        parts = {"loss": loss.item(), "loss_logit": loss_logit.item(), "loss_feature": loss_feature.item(),
                 "loss_ce": loss_ce.item()}
        if index == 0:
            parts.update(plan.logs)
        return loss, parts

    def end_step(self, step: int, logs: dict[str, float]) -> dict[str, float]:
        if self.latf is not None:
            return {"adakd_ratio_next": self.latf.update(step, logs["loss_logit"])}
        return {}

    def state_dict(self) -> dict:
        return {"difficulty": self.difficulty.state_dict(), "curriculum": self.curriculum.state_dict(),
                "latf": self.latf.state_dict() if self.latf is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.difficulty.load_state_dict(state["difficulty"])
        self.curriculum.load_state_dict(state["curriculum"])
        if self.latf is not None:
            self.latf.load_state_dict(state["latf"])

    # -- the no-grad teacher (and student statistics) pass ------------------------------------

    def _teacher_pass(self, mb: dict) -> dict:
        ids, mask = mb["ids"], mb["mask"]
        targets, valid = shift(ids, mask)
        m = self.cfg.method
        t_hidden, t_states, stats = None, [], {}
        if self.needs_teacher:
            with torch.inference_mode():
                out = self.teacher.base_model(input_ids=ids, output_hidden_states=self.dual, use_cache=False)
            # Clone out of inference mode: these tensors later meet autograd in the loss.
            t_hidden = flat(out.last_hidden_state).clone()  # [N, Dt]
            if self.dual:
                t_states = [flat(out.hidden_states[lt]).clone() for _, lt in self.layer_map]
            s_hidden = None
            if self.needs_student_stats:
                s_hidden = flat(self.train_modules(ids).last_hidden_state)
            temps = (1.0, m.eakd_temperature) if m.weighting == "eakd" else (1.0,)
            stats = chunked_token_stats(
                t_hidden, self.head(self.teacher), s_hidden, self.head(self.student) if s_hidden is not None else None,
                teacher_entropy_temps=temps,
                student_entropy_temps=(m.eakd_temperature,) if m.weighting == "eakd" else (),
                hellinger=m.weighting == "adakd" or self.cfg.temperature.name == "idts",
                chunk_size=self.cfg.loss.chunk_size)
        return {"ids": ids, "targets": targets, "valid": valid, "t_hidden": t_hidden, "t_states": t_states,
                "stats": stats}
