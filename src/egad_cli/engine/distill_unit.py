"""The distillation unit: batch -> EGAD (or baseline) loss, for the generic loop.

One optimizer step is two phases:
  plan  (no grad): teacher pass over all micro-batches of the step, exactly the per-token statistics
        the chosen policies declare (``needs``), the policies (difficulty u, curriculum and method
        weights w, temperatures τ, hard tokens), and the step's global denominators
        (``engine.normalization``: all micro-batches, all ranks);
  loss  (per micro-batch): student pass, the chunked sums, each divided by its global denominator,
        and the loss mix on one line:

  loss = kd_weight · (L_logit + μ · L_feature) + α · L_ce
  L_logit = Σ_i w_i τ_i² D(p_i^τ ‖ q_i^τ) / Σw,  L_feature = Σ_{i hard} w_i φ_i / Σw,  L_ce = Σ_i CE_i / n_valid

The unit never looks at a method's name: what a step computes follows from the policy objects the
config nodes build (``egad_cli.config.policies``) and the statistics they declare.

On-policy mode (``onpolicy.lmbda`` > 0, ``engine.onpolicy``): ``plan`` first lets the student continue the
prompts of a share λ of the sequences; the rewritten micro-batches (loss on the sampled tokens only) then
take the same path as data, so every divergence and policy applies to them unchanged.

Cross-tokenizer (``vmap``: the student has its own tokenizer, ``losses.cross_vocab``): a batch holds the
student's tokens (ids) and the teacher's (t_ids) of the same text, and t_index, the teacher position aligned to
each student position (``data.alignment``). The teacher runs on its own tokens and its rows are gathered at the
student positions; a position is a step token ("valid") when it is aligned. So the policies (difficulty,
curriculum, temperature, hard-token routing) read the teacher's entropy at the aligned teacher position, the
logit term compares the two next-token distributions mapped onto shared token strings, the dual branch reads
both models' states at the pair. A student position inside a span where the boundaries disagree gets no
distillation term (only the CE term, when α > 0, which covers every student loss token).

The teacher is either live (a model: its hidden states and lm_head give exact logits) or a teacher
cache (``teacher_cache.SplitReader``: top-k log-probs + tail sums, exact entropies, stored states),
read for the step's blocks in ``plan``; everything after that is the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from egad_cli.config.policies import PolicyContext
from egad_cli.config.schema import DistillConfig
from egad_cli.engine import parallel
from egad_cli.engine.normalization import Denominators, step_denominators
from egad_cli.engine.onpolicy import Rollout
from egad_cli.engine.runtime import Runtime
from egad_cli.errors import UserError
from egad_cli.losses import FeatureProjectors, chunked_distill_loss, chunked_token_stats, default_layer_map
from egad_cli.losses.cached import TeacherTopK, cached_hellinger
from egad_cli.losses.cross_vocab import VocabMap, cross_vocab_loss
from egad_cli.losses.sampled import TeacherSampled
from egad_cli.models.documents import base_forward
from egad_cli.policies import DIFFICULTY, Stat, StepStats, TokenPolicy, stats_pass_request, teacher_entropy


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
    t_hidden: Tensor | None  #: [N, Dt] teacher final hidden states (live teacher)
    t_top: TeacherTopK | None  #: [N, k] cached teacher rows (teacher cache)
    t_logits: Tensor | None  #: [N, V] teacher logits kept from the statistics pass (see _keeps_logits); the loss consumes them
    tau: Tensor  #: [N] per-token temperature
    w: Tensor  #: [N] token weight of the logit term (0 on invalid / unselected tokens)
    hard_idx: Tensor  #: [M] positions of hard tokens (dual branch)
    w_hard: Tensor  #: [M] token weights of those tokens
    t_states: list[Tensor]  #: per layer pair, [M, Dt] teacher states at the hard positions
    s_valid: Tensor | None = None  #: cross-tokenizer: [N] every student loss token (the CE term's); valid: the aligned ones


@dataclass
class StepPlan:
    micro: list[MicroPlan]
    denominators: Denominators
    logs: dict[str, float]


class TrainModules(nn.Module):
    """Everything trained: the student and (dual branch) the projectors. Checkpointed together;
    only the student is exported. forward returns the student's hidden states (not its logits)."""

    def __init__(self, student: nn.Module, projectors: FeatureProjectors | None):
        super().__init__()
        self.student = student
        self.projectors = projectors

    def forward(self, ids: Tensor, output_hidden_states: bool = False):
        return base_forward(self.student, ids, output_hidden_states=output_hidden_states)


def policy_needs(policies: dict[str, TokenPolicy]) -> frozenset[Stat]:
    """What a step must compute for these policies (``DistillUnit.policies()``): the union of what they
    read; the difficulty u is derived from the teacher's entropy by the difficulty policy, so asking for
    u asks for what it reads."""
    needs = set().union(*(p.needs for role, p in policies.items() if role != "difficulty"))
    if DIFFICULTY in needs:
        needs |= policies["difficulty"].needs
    return frozenset(needs)


def check_cross_needs(cfg: DistillConfig, needs: frozenset[Stat]) -> None:
    """A cross-tokenizer run compares the two models' distributions only through the mapped loss: a policy
    whose statistic compares them token by token over one vocabulary (AdaKD's Hellinger difficulty) is refused."""
    if any(s.kind == "hellinger" for s in needs):
        raise UserError(f"method={cfg.method.name}: its token difficulty (the Hellinger distance between the "
                        f"teacher's and the student's distributions) needs one shared vocabulary, and this "
                        f"student has its own tokenizer; pick another method (kd, egad, eakd, rkl, jsd, …)")


def build_policies(cfg: DistillConfig, ctx: PolicyContext) -> dict[str, TokenPolicy]:
    return {"difficulty": cfg.difficulty.build(ctx), "curriculum": cfg.curriculum.build(ctx),
            "weighting": cfg.weighting.build(ctx), "temperature": cfg.temperature.build(ctx),
            "routing": cfg.branch.build(ctx)}


class DistillUnit:
    def __init__(self, teacher: nn.Module | None, student: nn.Module, vocab_size: int, cfg: DistillConfig,
                 runtime: Runtime, total_steps: int, cache=None, rollout: Rollout | None = None,
                 vmap: VocabMap | None = None):
        """teacher: the live teacher, or None with ``cache`` (a ``teacher_cache.SplitReader`` of the train split).
        rollout: on-policy mode's sampler of student continuations (None: off-policy).
        vmap: cross-tokenizer runs: the shared token strings of the two vocabularies (vocab_size: the
        teacher's; the student's is vmap.s_vocab)."""
        self.cfg, self.runtime, self.vocab = cfg, runtime, vocab_size
        self.vmap = vmap
        self.s_vocab = vmap.s_vocab if vmap is not None else vocab_size
        self.teacher, self.cache, self.rollout = teacher, cache, rollout
        # An exact teacher cache stores the teacher's final states: with its output head they give the live
        # teacher's logits, and the step takes the live path from there (``_cached_pass``).
        self.exact_cache = cache is not None and cache.exact
        # [V, Dt], once in the dtype the stored (fp32) states meet it in: not a copy per chunk and micro-batch
        self._t_head = (cache.head.to(runtime.device, torch.promote_types(torch.float32, cache.head.dtype))
                        if self.exact_cache else None)
        ctx = PolicyContext(vocab_size=vocab_size, total_steps=total_steps, student_vocab_size=self.s_vocab)
        built = build_policies(cfg, ctx)
        self.difficulty, self.curriculum, self.weighting = built["difficulty"], built["curriculum"], built["weighting"]
        self.temperature, self.routing = built["temperature"], built["routing"]
        self.divergence = cfg.loss.divergence()
        # The loss mix (see the module docstring).
        self.kd_weight, self.alpha = cfg.method.kd_weight, cfg.method.ce_weight
        self.features = cfg.branch.features
        self.mu = cfg.branch.mu if self.features else 0.0

        self.needs: frozenset[Stat] = policy_needs(built)
        if vmap is not None:
            check_cross_needs(cfg, self.needs)
        self.stats_request = stats_pass_request(self.needs)
        self.student_stats = any(s.needs_student for s in self.needs)  # the no-grad student pass in `plan`
        self.needs_teacher = self.kd_weight > 0 or self.features or bool(self.needs)
        self.use_ce = self.alpha > 0  # without it the chunked loss skips the CE term and its gradient buffers
        self.chunk_size = cfg.loss.chunk_rows(vocab_size)
        # The statistics pass and the loss both need the teacher's logits: keep the pass's for the loss
        # when a step's fit keep_teacher_logits_mb (the rule, docs/performance.md).
        self.keep_budget = cfg.loss.keep_teacher_logits_mb * 2**20

        projectors = None
        t_layers, t_width = (cache.teacher_layers, cache.teacher_width) if cache is not None else \
            (teacher.config.num_hidden_layers, teacher.config.hidden_size)
        if self.features:
            self.layer_map = default_layer_map(student.config.num_hidden_layers, t_layers, cfg.branch.n_pairs)
            # Seeded, independent of the global RNG (whose state here depends on what ran before): a run
            # is reproducible from its config, the projectors' initialisation included.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.trainer.seed)
                projectors = FeatureProjectors(student.config.hidden_size, t_width, self.layer_map)
        self.train_modules = TrainModules(student, projectors).to(runtime.device)
        # what runs forward: train_modules, DDP around it, or train_modules itself sharded by FSDP2
        self.model = parallel.wrap_trainable(self.train_modules, student, runtime,
                                             torch.zeros(1, 2, dtype=torch.long, device=runtime.device),
                                             compile=cfg.trainer.compile,
                                             activation_checkpointing=cfg.trainer.activation_checkpointing)

    def policies(self) -> dict[str, TokenPolicy]:
        """Every policy of the step by role: checkpointed, asked for logs and step ends alike."""
        return {"difficulty": self.difficulty, "curriculum": self.curriculum, "weighting": self.weighting,
                "temperature": self.temperature, "routing": self.routing}

    # -- the loop's interface ---------------------------------------------------------------

    def named_trainable(self):
        mult = self.cfg.branch.projector_lr_mult if self.features else 1.0
        return [(n, p, mult if n.startswith("projectors.") else 1.0)
                for n, p in self.train_modules.named_parameters()]

    def modules(self) -> dict[str, nn.Module]:
        return {"train_modules": self.train_modules}

    def no_sync(self):
        """ddp/fsdp: no gradient communication (use on every micro-batch but the step's last)."""
        return parallel.no_sync(self.model)

    def gathered(self):
        """The student whole for calls outside the training forward (evaluation, sampling): see
        ``engine.parallel.gathered``."""
        return parallel.gathered(self.train_modules)

    @property
    def student(self) -> nn.Module:
        return self.train_modules.student

    def head(self, model: nn.Module) -> Tensor:
        """lm_head weight sliced to the model's real vocabulary: [V, D] (the same V for both models, except
        in a cross-tokenizer run)."""
        rows = self.s_vocab if model is self.student else self.vocab
        return model.get_output_embeddings().weight[:rows]

    def teacher_head(self) -> Tensor:
        """The teacher's output head [V, Dt]: the live teacher's, or the one an exact cache stores."""
        return self._t_head if self._t_head is not None else self.head(self.teacher)

    def plan(self, micro_batches: list[dict], progress: float) -> StepPlan:
        onpolicy_logs = {}
        if self.rollout is not None:
            micro_batches, onpolicy_logs = self._sample(micro_batches)
        parts = [self._teacher_pass(mb) for mb in micro_batches]
        sizes = [p["valid"].numel() for p in parts]
        valid = torch.cat([p["valid"] for p in parts])  # [N_step] this rank's tokens
        # Stat -> [N_step], in the order of their keys: a frozenset's order follows the process's string hash
        # seed, which differs between ranks, and the all-gathers below must pair the same statistic
        local = {s: torch.cat([p["stats"][s] for p in parts]) for s in sorted(parts[0]["stats"], key=lambda s: s.key)}
        # The policies see the whole step, every rank's tokens (an all-gather of a few [N_step] vectors): the
        # difficulty ranks, the hard-token share and the stateful policies are then the same at any world
        # size, and identical on every rank. Each rank keeps its own slice of what they return.
        own = slice(self.runtime.rank * valid.numel(), (self.runtime.rank + 1) * valid.numel())
        stats = StepStats(self.runtime.all_gather_cat(valid), progress,
                          {s: self.runtime.all_gather_cat(v) for s, v in local.items()})
        if DIFFICULTY in self.needs:
            stats.values[DIFFICULTY] = self.difficulty.of(stats)  # [N_world] in [0, 1]
        w = (self.curriculum(stats) * self.weighting(stats))[own]  # [N_step]
        tau_world = self.temperature(stats)  # [N_world]
        tau = tau_world[own]  # [N_step]
        # The losses multiply each token's divergence by τ²; another temperature.scale (none, mean1) is folded into
        # the logit weight as f / τ², so that every loss path (chunked, cached, cross-vocabulary) sees it alike.
        # tau2 leaves the weights untouched (bit for bit as before).
        rescale = None
        if self.temperature.scale != "tau2":
            rescale = self.temperature.factor(tau_world, stats.valid)[own] / tau.square()  # [N_step]
        hard = self.routing(stats)[own]  # [N_step] bool
        stats = StepStats(valid, progress, {s: v[own] for s, v in stats.values.items()})
        n_valid = valid.sum().float()
        # the CE term's tokens: every student loss token (cross-tokenizer: not only the aligned ones)
        n_ce = sum(p["s_valid"].sum() for p in parts).float() if self.vmap is not None else n_valid
        den = step_denominators(w.sum() if self.cfg.weighting.norm == "sum_w" else n_valid, n_ce, self.runtime)
        # kd_weight = 0 (plain fine-tuning): zero logit weights let the chunked loss skip the divergence.
        w_logit = w if self.kd_weight > 0 else torch.zeros_like(w)
        if rescale is not None:
            w_logit = w_logit * rescale
        micro = []
        for p, mb_w, mb_logit, mb_tau, mb_hard in zip(parts, w.split(sizes), w_logit.split(sizes), tau.split(sizes),
                                                       hard.split(sizes)):
            idx = mb_hard.nonzero().squeeze(1)  # [M]
            micro.append(MicroPlan(
                ids=p["ids"], targets=p["targets"], valid=p["valid"], t_hidden=p["t_hidden"], t_top=p["t_top"],
                t_logits=p["t_logits"], tau=mb_tau,
                w=mb_logit, hard_idx=idx, w_hard=mb_w[idx], t_states=[s[idx].clone() for s in p["t_states"]],
                s_valid=p.get("s_valid")))
        n = n_valid.clamp_min(1)
        logs = {"tau_mean": float((tau * valid).sum() / n), "weight_mean": float((w * valid).sum() / n),
                "hard_frac": float((hard & valid).sum() / n)}
        if self.vmap is not None:
            logs["aligned_frac"] = float(n_valid / n_ce.clamp_min(1))
        if teacher_entropy(1.0) in stats:
            logs["entropy_mean"] = float((stats[teacher_entropy(1.0)] * valid).sum() / n)
        if onpolicy_logs:
            on_tokens = sum(float(p["valid"].view(len(on), -1)[on.to(p["valid"].device)].sum())
                            for p, on in zip(parts, onpolicy_logs.pop("rows")))
            logs.update(onpolicy_logs, onpolicy_frac=on_tokens / float(n))
        for policy in self.policies().values():
            logs.update(policy.logs())
        return StepPlan(micro, den, logs)

    def loss(self, plan: StepPlan, index: int) -> tuple[Tensor, dict[str, float]]:
        mp = plan.micro[index]
        out = self.model(mp.ids, output_hidden_states=self.features)
        s_hidden = flat(out.last_hidden_state)  # [N, Ds]
        s_head = self.head(self.student)
        if self.runtime.autocast_dtype is not None and self.runtime.device.type == "cpu":
            # what autocast does to an nn.Linear head: the chunked loss (autocast off inside) then runs the head's
            # three matmuls [N, Ds]·[Ds, V] in bf16 with fp32 accumulation, not in fp32 (on a CPU the fp32 ones
            # run at a seventh of the bf16 rate); the gradients reach the fp32 weights through the casts. Not on
            # CUDA, where fp32 runs as TF32 and this was not measured
            s_hidden, s_head = s_hidden.to(self.runtime.autocast_dtype), s_head.to(self.runtime.autocast_dtype)
        # Kept teacher logits are handed to the loss once, which overwrites them; a second loss() on the same
        # plan recomputes them from t_hidden.
        t_logits, mp.t_logits = mp.t_logits, None
        den = plan.denominators
        cross_parts = {}
        if self.vmap is not None:  # the logit term over the shared strings + ULD; CE on every student loss token
            logit_sum, ce_sum, cross_parts = self._cross_sums(mp, s_hidden, s_head, t_logits)
        else:
            t_hidden, t_head = mp.t_hidden, (self.teacher_head() if mp.t_hidden is not None else None)
            if t_hidden is None and mp.t_top is None:  # plain fine-tuning: no teacher; w is all 0, so this only
                t_hidden, t_head = s_hidden.detach(), s_head.detach()  # makes shapes line up
            logit_sum, ce_sum = chunked_distill_loss(
                s_hidden, s_head, t_hidden, t_head, mp.tau, mp.w, divergence=self.divergence,
                labels=mp.targets if self.use_ce else None, ce_coef=mp.valid.float() if self.use_ce else None,
                chunk_size=self.chunk_size, cached=mp.t_top, t_logits=t_logits, consume_t_logits=True)
        feature_sum = torch.zeros((), device=s_hidden.device)
        if self.features and mp.hard_idx.numel() > 0:
            s_states = [flat(out.hidden_states[ls])[mp.hard_idx] for ls, _ in self.layer_map]  # [M, Ds] each
            phi = self.train_modules.projectors(s_states, mp.t_states, self.cfg.branch.feature_loss)  # [M]
            feature_sum = (mp.w_hard * phi).sum()
        elif self.features:
            # No hard token in this micro-batch (the hard share is taken over the whole step, all ranks): keep
            # the projectors in the graph with a zero term, so DDP's and FSDP2's gradient reductions find a
            # gradient for every parameter on every rank, as they require.
            feature_sum = sum(p.sum() for p in self.train_modules.projectors.parameters()) * 0.0
        L_logit, L_feature, L_ce = logit_sum / den.weight, feature_sum / den.weight, ce_sum / den.tokens
        loss = self.kd_weight * (L_logit + self.mu * L_feature) + self.alpha * L_ce
        parts = {"loss": loss.item(), "loss_logit": L_logit.item(), "loss_feature": L_feature.item(),
                 "loss_ce": L_ce.item(), **{k: v / den.weight for k, v in cross_parts.items()}}
        if index == 0:
            parts.update(plan.logs)
        return loss, parts

    def _cross_sums(self, mp: MicroPlan, s_hidden: Tensor, s_head: Tensor,
                    t_logits: Tensor | None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """A cross-tokenizer micro-batch's sums: the logit term (mapped divergence + uld_weight · ULD, on the
        aligned positions: w is 0 elsewhere), the CE term over every student loss token, and the two logit parts
        (sums, for the logs)."""
        zero = torch.zeros((), device=s_hidden.device)
        mapped_sum = uld_sum = zero
        if mp.t_hidden is not None:  # None: plain fine-tuning, no teacher
            mapped_sum, uld_sum = cross_vocab_loss(
                s_hidden, s_head, mp.t_hidden, self.teacher_head(), mp.tau, mp.w, self.divergence, self.vmap,
                uld_weight=self.cfg.cross.uld_weight, uld_top=self.cfg.cross.uld_top, chunk_size=self.chunk_size,
                t_logits=t_logits)
        ce_sum = zero
        if self.use_ce:  # zero logit weights make the chunked loss CE only
            no_logit = torch.zeros_like(mp.s_valid, dtype=s_hidden.dtype)
            _, ce_sum = chunked_distill_loss(
                s_hidden, s_head, s_hidden.detach(), s_head.detach(), torch.ones_like(no_logit), no_logit,
                divergence=self.divergence, labels=mp.targets, ce_coef=mp.s_valid.to(no_logit.dtype),
                chunk_size=self.chunk_size)
        logit_sum = mapped_sum + self.cfg.cross.uld_weight * uld_sum
        return logit_sum, ce_sum, {"loss_mapped": mapped_sum.item(), "loss_uld": uld_sum.item()}

    def end_step(self, step: int, logs: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        if "time_gen_s" in logs:
            out["gen_share"] = logs["time_gen_s"] / max(logs["time_step_s"], 1e-12)
        for policy in self.policies().values():
            out.update(policy.end_step(step, logs))
        return out

    def state_dict(self) -> dict:
        return {name: policy.state_dict() for name, policy in self.policies().items()}

    def load_state_dict(self, state: dict) -> None:
        for name, policy in self.policies().items():
            if name in state:
                policy.load_state_dict(state[name])
            elif policy.state_dict():  # a stateful policy must not silently restart from scratch
                raise UserError(f"trainer.resume: the checkpoint has no state for the {name} policy of this run "
                                f"({type(policy).__name__}); it was written by another method or egad version")

    # -- on-policy sampling -----------------------------------------------------------------

    def _sample(self, micro_batches: list[dict]) -> tuple[list[dict], dict]:
        """The micro-batches with their on-policy rows sampled by the student, and the step's sampling logs:
        time_gen_s, gen_len (mean sampled tokens a sampled sequence), and rows (per micro-batch, [B] bool)."""
        out, rows, n_seq, n_new = [], [], 0, 0
        start = time.perf_counter()
        with self.gathered():  # generate() does not enter through the FSDP root
            for mb in micro_batches:
                mb, on, log = self.rollout(mb)
                out.append(mb)
                rows.append(on)
                n_seq, n_new = n_seq + log.sequences, n_new + log.new_tokens
        seconds = time.perf_counter() - start
        return out, {"time_gen_s": seconds, "gen_len": n_new / max(n_seq, 1), "rows": rows}

    # -- the no-grad teacher (and student statistics) pass ------------------------------------

    def _teacher_pass(self, mb: dict) -> dict:
        if self.cache is not None:
            return self._cached_pass(mb)
        if self.vmap is not None:
            return self._cross_pass(mb)
        ids, mask = mb["ids"], mb["mask"]
        targets, valid = shift(ids, mask)
        t_hidden, t_states, stats, t_logits = None, [], {}, None
        if self.needs_teacher:
            # inference_mode, except on an FSDP2 teacher: the buffers it gathers into are reused by later
            # no-grad passes (held-out KL), where inference tensors may not be written
            with torch.no_grad() if self.runtime.strategy == "fsdp" else torch.inference_mode():
                out = base_forward(self.teacher, ids, output_hidden_states=self.features)
            # Clone out of inference mode: these tensors later meet autograd in the loss.
            t_hidden = flat(out.last_hidden_state).clone()  # [N, Dt]
            if self.features:
                t_states = [flat(out.hidden_states[lt]).clone() for _, lt in self.layer_map]
            stats, t_logits = self._statistics(ids, t_hidden)
        return {"ids": ids, "targets": targets, "valid": valid, "t_hidden": t_hidden, "t_top": None,
                "t_logits": t_logits, "t_states": t_states, "stats": stats}

    def _statistics(self, ids: Tensor, t_hidden: Tensor) -> tuple[dict[Stat, Tensor], Tensor | None]:
        """The policies' statistics from the teacher's final states t_hidden [N, Dt] (live, or an exact cache's)
        through its head, and the teacher logits [N, V] kept for the loss (None: the loss recomputes them)."""
        if not self.needs - {DIFFICULTY}:
            return {}, None
        s_hidden = flat(self.train_modules(ids).last_hidden_state) if self.student_stats else None
        by_key = chunked_token_stats(
            t_hidden, self.teacher_head(), s_hidden, self.head(self.student) if s_hidden is not None else None,
            **self.stats_request, keep_teacher_logits=self._keeps_logits(t_hidden), chunk_size=self.chunk_size)
        return {s: by_key[s.key] for s in self.needs if s != DIFFICULTY}, by_key.get("teacher_logits")

    def _cross_pass(self, mb: dict) -> dict:
        """The live pass of a cross-tokenizer run: the teacher on its own tokens, its rows gathered at the student
        positions. Position j is valid when it is aligned (``t_index[j]`` ≥ 0: both tokenisations end at the same
        byte there); the step keeps the same-tokenizer layout, one row per student position (N = B·(Ls−1) on
        every rank, as the all-gathers of ``plan`` need), and an unaligned position gets the teacher's first row
        of its block as a placeholder that its zero weight never reads."""
        ids, mask = mb["ids"], mb["mask"]
        targets, s_valid = shift(ids, mask)  # [N] each
        t_ids = mb["t_ids"]  # [B, Lt]
        t_index = mb["t_index"].reshape(-1)  # [N]: the aligned teacher predicting position, or -1
        valid = (t_index >= 0) & s_valid  # [N]
        blocks = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(ids.shape[1] - 1)  # [N]
        t_rows = blocks * (t_ids.shape[1] - 1) + t_index.clamp_min(0)  # [N] flat teacher positions
        part = {"ids": ids, "targets": targets, "valid": valid, "t_hidden": None, "t_top": None, "t_logits": None,
                "t_states": [], "stats": {}, "s_valid": s_valid}
        if not self.needs_teacher:  # plain fine-tuning (method=ce) on the student's tokens: no teacher pass
            return part
        with torch.no_grad() if self.runtime.strategy == "fsdp" else torch.inference_mode():
            out = base_forward(self.teacher, t_ids, output_hidden_states=self.features)
        # Clone out of inference mode: these tensors later meet autograd in the loss.
        part["t_hidden"] = flat(out.last_hidden_state)[t_rows].clone()  # [N, Dt]
        if self.features:
            part["t_states"] = [flat(out.hidden_states[lt])[t_rows].clone() for _, lt in self.layer_map]
        part["stats"], part["t_logits"] = self._statistics(ids, part["t_hidden"])
        return part

    def _keeps_logits(self, t_hidden: Tensor) -> bool:
        """Keep the statistics pass's teacher logits [N, V] for the loss (no second teacher head matmul)
        when the loss uses them and the step's (all its micro-batches) fit loss.keep_teacher_logits_mb:
        N · V · itemsize · grad_accum. Above the budget the loss recomputes them chunk by chunk."""
        if self.kd_weight == 0:
            return False
        itemsize = torch.promote_types(t_hidden.dtype, self.teacher_head().dtype).itemsize
        return t_hidden.shape[0] * self.vocab * itemsize * self.cfg.trainer.grad_accum <= self.keep_budget

    def _cached_pass(self, mb: dict) -> dict:
        """The same as the live pass, read from the teacher cache: its rows for the micro-batch's blocks. An exact
        cache gives the teacher's final states, and from them on the step is the live one (statistics, kept
        logits, the loss: the stored head in place of the teacher's). A compact cache gives its rows (top-k,
        draws), the teacher's entropies as stored (exact), and the student's statistics are computed here."""
        ids, mask = mb["ids"], mb["mask"]
        targets, valid = shift(ids, mask)
        rows = self.cache.rows(mb["blocks"], self.runtime.device, states=self.features)
        if self.exact_cache:
            t_hidden = rows["hidden"]  # [N, Dt] fp32
            t_states = [rows["states"][lt] for _, lt in self.layer_map] if self.features else []
            stats, t_logits = self._statistics(ids, t_hidden) if self.needs_teacher else ({}, None)
            return {"ids": ids, "targets": targets, "valid": valid, "t_hidden": t_hidden, "t_top": None,
                    "t_logits": t_logits, "t_states": t_states, "stats": stats}
        if isinstance(rows["top"], TeacherSampled) and not self.cfg.loss.TEACHER_WEIGHTED:
            rows["top"] = rows["top"].bucketed()  # the student's mass off the draws is what it would exploit
        t_states = [rows["states"][lt] for _, lt in self.layer_map] if self.features else []
        stats = {s: rows["entropy"][s.temperature] for s in self.needs if s.kind == "teacher_entropy"}
        if self.student_stats:
            with torch.no_grad():
                s_hidden = flat(self.train_modules(ids).last_hidden_state)  # [N, Ds]
            s_head = self.head(self.student).detach()
            temps = self.stats_request["student_entropy_temps"]
            if temps:  # the student's entropies: the same chunked pass, with the student as the model
                own = chunked_token_stats(s_hidden, s_head, teacher_entropy_temps=temps,
                                          chunk_size=self.chunk_size)
                stats.update({s: own[f"teacher_entropy@{s.temperature:g}"] for s in self.needs
                              if s.kind == "student_entropy"})
            if self.stats_request["hellinger"]:
                stats[next(s for s in self.needs if s.kind == "hellinger")] = cached_hellinger(
                    rows["top"], s_hidden, s_head, self.chunk_size)
        return {"ids": ids, "targets": targets, "valid": valid, "t_hidden": None, "t_top": rows["top"],
                "t_logits": None, "t_states": t_states, "stats": stats}
