"""Memory-efficient distillation loss and token statistics, computed in token chunks (DESIGN §7).

The naive path materialises fp32 logits ``[N, V]`` for teacher and student (plus their
log-softmaxes and the autograd buffers of the student's): at N = 16k tokens and V = 128k that is
tens of GB. Here the loss is computed from the *final hidden states* and the *lm_head weights*,
``chunk_size`` tokens at a time, so at most a few ``[chunk_size, V]`` fp32 tensors exist at once.

Gradient strategy (the "your call" of the design): a custom ``autograd.Function`` that computes the
gradients of each chunk **during the forward pass** and only scales them in backward — the scheme
of Liger-Kernel's fused-linear distillation losses — rather than ``torch.utils.checkpoint`` per
chunk. Why:

* checkpointing recomputes *both* lm_head matmuls in backward, and the teacher one is the biggest
  (teacher width ≥ student width): 6 vocabulary-sized matmuls per token instead of 4 here
  (teacher fwd, student fwd, grad w.r.t. hidden, grad w.r.t. head);
* non-reentrant checkpointing keeps each chunk's inputs alive; ours keeps only the gradient
  buffers, which are the size of ``s_hidden`` rows and ``s_head`` (what ``.grad`` needs anyway);
* the teacher tensors are never saved for backward, so inference tensors (made under
  ``torch.inference_mode()``) can be passed directly.

Within a chunk, the gradient w.r.t. the student logits z [C, V] is analytic for the built-in
divergences (``divergences.value_and_grad``: g = ∂D/∂log q, then ∂/∂z = coef·τ·(g − q·Σg)) and for
CE (softmax − onehot), computed with in-place arithmetic: forward KL holds 3 fp32 [C, V] tensors
(z, the teacher's, the gradient), against ~8 through autograd (measured: peak RSS). A divergence without an analytic
gradient (a user's) and a cached teacher's buckets take a local autograd call instead.
``LossConfig.chunk_rows`` sizes chunks for 4 such tensors (``loss.chunk_size=auto``).

Costs of the choice: the forward does the backward's work even if ``.backward()`` is never
called (so a call without grad mode, or without any input requiring grad, takes a value-only path),
double backward is not supported, and because the two outputs (divergence and CE) may be weighted
differently by the caller, each has its own gradient buffers when ``labels`` is given.

Precision: each chunk's logits are computed by a matmul in the promoted dtype of (hidden, head) —
bf16 inputs use bf16 tensor cores with fp32 accumulation, fp32 inputs give exactly the naive fp32
reference — and are then upcast to fp32 before temperature, log_softmax and the divergence.
Autocast is disabled inside, so the dtypes the caller passes decide the matmul precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cached import TeacherTopK
from .divergences import Divergence, entropy_from_moments, rowdot, value_and_grad
from .divergences import hellinger as hellinger_distance  # the stats function has a `hellinger` flag
from .sampled import TeacherSampled

__all__ = ["chunked_distill_loss", "chunked_token_stats", "entropy_at"]

IGNORE_INDEX = -100


@dataclass
class _Grads:
    """Per-output gradient buffers filled chunk by chunk in the forward pass (fp32)."""

    h: Tensor  # [A, Ds] gradient w.r.t. the A active rows of s_hidden
    w: Tensor  # [V, Ds] gradient w.r.t. s_head


def _matmul_dtype(h: Tensor, w: Tensor) -> torch.dtype:
    return torch.promote_types(h.dtype, w.dtype)


def _check_inputs(
    s_hidden: Tensor,
    s_head: Tensor,
    t_hidden: Tensor,
    t_head: Tensor,
    tau: Tensor,
    coef: Tensor,
    labels: Tensor | None,
    ce_coef: Tensor | None,
    chunk_size: int,
) -> None:
    """Fail early with the offending shapes (a silent broadcast here would be a wrong loss)."""
    problems = []
    if t_hidden is None:  # a cached teacher: its rows stand in for the teacher's hidden states and head
        t_hidden, t_head = s_hidden, s_head
    if s_hidden.dim() != 2 or t_hidden.dim() != 2:
        problems.append(f"hidden states must be [N, D], got {tuple(s_hidden.shape)}, {tuple(t_hidden.shape)}")
    elif s_hidden.shape[0] != t_hidden.shape[0]:
        problems.append(f"student/teacher token counts differ: {s_hidden.shape[0]} vs {t_hidden.shape[0]}")
    if s_head.dim() != 2 or t_head.dim() != 2 or s_head.shape[0] != t_head.shape[0]:
        problems.append(
            f"heads must be [V, D] with the same V, got {tuple(s_head.shape)}, {tuple(t_head.shape)}"
        )
    elif (
        s_hidden.dim() == 2
        and t_hidden.dim() == 2
        and (s_head.shape[1] != s_hidden.shape[-1] or t_head.shape[1] != t_hidden.shape[-1])
    ):
        problems.append(
            f"head width does not match hidden width: student {tuple(s_head.shape)} vs "
            f"{tuple(s_hidden.shape)}, teacher {tuple(t_head.shape)} vs {tuple(t_hidden.shape)}"
        )
    n = s_hidden.shape[0]
    named = {"tau": tau, "coef": coef, "labels": labels, "ce_coef": ce_coef}
    for name, t in named.items():
        if t is not None and tuple(t.shape) != (n,):
            problems.append(f"{name} must be [N] = [{n}], got {tuple(t.shape)}")
    if (labels is None) != (ce_coef is None):
        problems.append("labels and ce_coef must be given together")
    if chunk_size < 1:
        problems.append(f"chunk_size must be >= 1, got {chunk_size}")
    if problems:
        raise ValueError("chunked_distill_loss: " + "; ".join(problems))


def _chunk_loop(
    s_hidden: Tensor,
    s_head: Tensor,
    t_hidden: Tensor,
    t_head: Tensor,
    tau: Tensor,
    coef: Tensor,
    labels: Tensor | None,
    ce_coef: Tensor | None,
    fn: Divergence,
    chunk_size: int,
    cached: TeacherTopK | TeacherSampled | None,
    t_logits: Tensor | None,
    consume_t_logits: bool,
    with_grads: bool,
) -> tuple[Tensor, Tensor, Tensor, _Grads | None, _Grads | None]:
    """Sum the weighted per-token losses over chunks of the active rows.

    Returns (div_sum, ce_sum, rows, div_grads, ce_grads); the grads are None unless with_grads.
    Must be called with grad mode off: each chunk's gradient w.r.t. its student logits z [C, V] is
    formed here (analytically for the built-in divergences and CE, by a local autograd call for the
    others and for a cached teacher), then pushed through the lm_head matmul by hand.
    """
    device = s_hidden.device
    v, ds = s_head.shape
    use_ce = labels is not None

    # Skip tokens that contribute nothing (padding, prompt, tokens gated off by a curriculum):
    # gathering the active rows first avoids their lm_head matmuls entirely.
    active = coef != 0  # [N] bool
    if use_ce:
        active = active | (ce_coef != 0)
    rows = active.nonzero().squeeze(1)  # [A] int64 (one host sync per call)
    n_active = rows.numel()
    analytic = value_and_grad(fn) if cached is None else None
    unit_tau = bool((tau.index_select(0, rows) == 1).all())  # plain KD at T = 1: no divisions by τ

    s_dt = _matmul_dtype(s_hidden, s_head)
    w_s = s_head.to(s_dt)  # [V, Ds] (no copy when already s_dt)
    if cached is None and t_logits is None:
        t_dt = _matmul_dtype(t_hidden, t_head)
        w_t = t_head.to(t_dt)  # [V, Dt]

    # Kept logits handed over (consume_t_logits) with every row active: each chunk is a view of its rows,
    # overwritten in place, instead of a copy.
    in_place = consume_t_logits and t_logits is not None and t_logits.dtype == torch.float32 \
        and n_active == coef.numel()

    def teacher_logits(start: int, r: Tensor) -> Tensor:
        """The chunk's teacher logits, fp32 [C, V], which the caller may overwrite."""
        if t_logits is not None:  # kept from the statistics pass (see DistillUnit)
            if in_place:
                return t_logits[start : start + r.numel()]
            out = t_logits.index_select(0, r)
            return out if out.dtype == torch.float32 else out.float()
        return (t_hidden.index_select(0, r).to(t_dt) @ w_t.T).float()

    div_sum = torch.zeros((), dtype=torch.float32, device=device)
    ce_sum = torch.zeros((), dtype=torch.float32, device=device)
    div_grads = ce_grads = None
    if with_grads:
        div_grads = _Grads(
            h=torch.zeros(n_active, ds, dtype=torch.float32, device=device),
            w=torch.zeros(v, ds, dtype=torch.float32, device=device),
        )
        if use_ce:
            ce_grads = _Grads(h=torch.zeros_like(div_grads.h), w=torch.zeros_like(div_grads.w))

    for start in range(0, n_active, chunk_size):
        r = rows[start : start + chunk_size]  # [C]
        h_s = s_hidden.index_select(0, r).to(s_dt)  # [C, Ds]
        tau_c = tau.index_select(0, r).float().unsqueeze(1)  # [C, 1]
        coef_c = coef.index_select(0, r).float()  # [C]
        z = (h_s @ w_s.T).float()  # [C, V] student logits

        if use_ce:  # first, while z is still the logits at T = 1
            ce_c, g, row_scale = _cross_entropy(z, labels.index_select(0, r), ce_coef.index_select(0, r).float(),
                                                with_grads)
            ce_sum += ce_c
            if with_grads:
                _push(g, row_scale, ce_grads, start, h_s, w_s)
            del g

        row_scale = None  # the autograd path's gradient is already weighted
        if analytic is not None:
            div_c, g, row_scale = _analytic_divergence(z, teacher_logits(start, r), tau_c, coef_c, unit_tau, analytic,
                                                       with_grads)
        else:
            if cached is None:
                t_logp = torch.log_softmax(teacher_logits(start, r) / tau_c, dim=-1)  # [C, V]

                def per_token(z_: Tensor, t_logp=t_logp, tau_c=tau_c) -> Tensor:
                    return fn(t_logp, torch.log_softmax(z_ / tau_c, dim=-1))
            else:  # the cache's own form: bucketed (top-k) or estimated from draws (sampled)
                rows_c = cached.rows(r)

                def per_token(z_: Tensor, rows_c=rows_c, tau_c=tau_c) -> Tensor:
                    return rows_c.divergence(z_, tau_c.squeeze(1), fn)
            div_c, g = _autograd_divergence(z, per_token, tau_c, coef_c, with_grads)
        div_sum += div_c
        if with_grads:
            _push(g, row_scale, div_grads, start, h_s, w_s)
    return div_sum, ce_sum, rows, div_grads, ce_grads


def _weighted_sum(d: Tensor, coef_c: Tensor, tau_c: Tensor) -> Tensor:
    """Σ_c coef_c · τ_c² · d_c; where, not a bare product: a CE-only row (coef 0) must not turn an inf into nan."""
    return torch.where(coef_c != 0, coef_c * tau_c.squeeze(1).square() * d, 0.0).sum()


def _analytic_divergence(z: Tensor, t_logits: Tensor, tau_c: Tensor, coef_c: Tensor, unit_tau: bool,
                         analytic, with_grads: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A built-in divergence with its analytic gradient, in place: 3 fp32 [C, V] tensors live for
    forward KL (z, the teacher's, the gradient; the mixture divergences a few more, briefly).

    z, t_logits: [C, V] fp32 scratch (both are overwritten). Returns (the chunk's weighted sum,
    ∂d/∂z [C, V] unweighted, the rows' weights [C]), or (sum, None, None) without grads: the weights
    are applied to the [C, Ds] products in ``_push``, not to the [C, V] gradient (one pass over it fewer)."""
    if not unit_tau:
        z.div_(tau_c)
        t_logits.div_(tau_c)
    # In place (out= the input: the CPU and CUDA kernels reduce a row before writing it; the same
    # values as the out-of-place call): the chunk holds z, t_logits and the gradient, nothing else.
    s_logp = torch.log_softmax(z, dim=-1, out=z)  # [C, V]
    t_logp = torch.log_softmax(t_logits, dim=-1, out=t_logits)  # [C, V]
    d, g = analytic(t_logp, s_logp)  # [C], ∂d/∂s_logp [C, V] (t_logp is consumed)
    div_c = _weighted_sum(d, coef_c, tau_c)
    if not with_grads:
        return div_c, None, None
    # Through s_logp = log_softmax(z / τ) and the weight coef · τ²:  ∂/∂z = coef · τ · (g − q Σ_v g).
    g_sum = g.sum(dim=-1, keepdim=True)  # [C, 1]
    q = s_logp.exp_()  # [C, V], in place of s_logp
    g.addcmul_(q, g_sum, value=-1.0)  # g − q Σg, one pass
    scale = torch.where(coef_c != 0, coef_c * tau_c.squeeze(1), 0.0)  # [C]
    return div_c, _zero_rows(g, scale), scale


def _zero_rows(g: Tensor, scale: Tensor) -> Tensor:
    """Rows of weight 0 get exactly 0 (an inf or nan beside a zero weight would survive the product). On a CPU only
    those rows are written; on an accelerator a masked pass over [C, V] instead, which needs no host sync."""
    if g.device.type != "cpu":
        return g.masked_fill_((scale == 0).unsqueeze(1), 0.0)
    off = (scale == 0).nonzero().squeeze(1)  # [Z], usually empty
    if off.numel():
        g.index_fill_(0, off, 0.0)
    return g


def _autograd_divergence(z: Tensor, per_token, tau_c: Tensor, coef_c: Tensor,
                         with_grads: bool) -> tuple[Tensor, Tensor | None]:
    """Any divergence, by a local autograd call w.r.t. the chunk's student logits z [C, V]; the path of
    a user-added divergence without an analytic gradient and of a cached teacher. per_token: z -> [C]."""
    z = z.requires_grad_(with_grads)  # a local autograd leaf
    with torch.set_grad_enabled(with_grads):
        div_c = _weighted_sum(per_token(z), coef_c, tau_c)
    if not with_grads:
        return div_c, None
    (g,) = torch.autograd.grad(div_c, z)
    return div_c.detach(), g


def _cross_entropy(z: Tensor, labels: Tensor, ce_coef: Tensor,
                   with_grads: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Σ ce_coef · CE(z, label) at T = 1, its unweighted gradient softmax(z) − onehot [C, V] (0 on ignored
    rows) and the rows' weights [C] (0 where ignored), as ``_analytic_divergence``. z is not modified."""
    ce_tok = F.cross_entropy(z, labels, reduction="none", ignore_index=IGNORE_INDEX)  # [C]
    ce_c = torch.where(ce_coef != 0, ce_coef * ce_tok, 0.0).sum()
    if not with_grads:
        return ce_c, None, None
    weight = torch.where((ce_coef != 0) & (labels != IGNORE_INDEX), ce_coef, 0.0)  # [C]
    g = torch.softmax(z, dim=-1)  # [C, V]
    hit = weight.nonzero().squeeze(1)
    g[hit, labels[hit]] -= 1.0
    return ce_c, _zero_rows(g, weight), weight


def _push(g: Tensor, row_scale: Tensor | None, grads: _Grads, start: int, h_s: Tensor, w_s: Tensor) -> None:
    """Through logits = h_s @ w_s.T by hand, with the rows' weights S = diag(row_scale) [C] (None: 1) applied to
    the narrow side: dh = S (g @ w_s) [C, Ds], dW += g.T @ (S h_s) [V, Ds]."""
    g = g.to(w_s.dtype)  # [C, V]
    dh = g @ w_s  # [C, Ds]
    if row_scale is not None:
        dh = dh * row_scale.unsqueeze(1)  # fp32
        h_s = (h_s * row_scale.unsqueeze(1)).to(h_s.dtype)
    grads.h[start : start + g.shape[0]] = dh
    if w_s.dtype == torch.float32:
        grads.w.addmm_(g.T, h_s)  # in place, no [V, Ds] temporary
    else:
        grads.w += g.T @ h_s


class _ChunkedDistillFn(torch.autograd.Function):
    """(s_hidden, s_head, teacher..., weights) -> (div_sum, ce_sum), gradients precomputed in forward."""

    @staticmethod
    def forward(ctx, s_hidden, s_head, *rest):
        # rest = (t_hidden, t_head, tau, coef, labels, ce_coef, fn, chunk_size, cached, t_logits, consume_t_logits)
        with torch.autocast(device_type=s_hidden.device.type, enabled=False):
            div_sum, ce_sum, rows, div_grads, ce_grads = _chunk_loop(s_hidden, s_head, *rest, with_grads=True)
        # Intermediates (not inputs/outputs) are stored on ctx directly; nothing of the teacher is.
        ctx.rows, ctx.div_grads, ctx.ce_grads = rows, div_grads, ce_grads
        ctx.h_shape, ctx.h_dtype, ctx.w_dtype = s_hidden.shape, s_hidden.dtype, s_head.dtype
        ctx.n_rest = len(rest)
        return div_sum, ce_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, g_div: Tensor, g_ce: Tensor):
        grad_h = grad_w = None
        ce = ctx.ce_grads
        if ctx.needs_input_grad[0]:
            gh = ctx.div_grads.h * g_div  # [A, Ds]
            if ce is not None:
                gh = torch.addcmul(gh, ce.h, g_ce)
            grad_h = torch.zeros(ctx.h_shape, dtype=ctx.h_dtype, device=gh.device)  # [N, Ds]
            grad_h.index_copy_(0, ctx.rows, gh.to(ctx.h_dtype))
        if ctx.needs_input_grad[1]:
            gw = ctx.div_grads.w * g_div  # [V, Ds]
            if ce is not None:
                gw = torch.addcmul(gw, ce.w, g_ce)
            grad_w = gw.to(ctx.w_dtype)
        return (grad_h, grad_w) + (None,) * ctx.n_rest


def chunked_distill_loss(
    s_hidden: Tensor,
    s_head: Tensor,
    t_hidden: Tensor | None,
    t_head: Tensor | None,
    tau: Tensor,
    coef: Tensor,
    *,
    divergence: Divergence,
    labels: Tensor | None = None,
    ce_coef: Tensor | None = None,
    chunk_size: int = 1024,
    cached: TeacherTopK | TeacherSampled | None = None,
    t_logits: Tensor | None = None,
    consume_t_logits: bool = False,
) -> tuple[Tensor, Tensor]:
    """Weighted, per-token-temperature distillation loss without full-vocabulary logits.

    Args:
        s_hidden: [N, Ds] student final (post-norm) hidden states; any float dtype.
        s_head:   [V, Ds] student lm_head weight, sliced to the shared vocabulary V.
        t_hidden: [N, Dt] teacher final hidden states; may be an inference tensor.
        t_head:   [V, Dt] teacher lm_head weight (sliced); never receives a gradient.
        tau:      [N] per-token temperature (> 0), treated as a constant.
        coef:     [N] per-token coefficient (the curriculum / routing weight, 0 on masked tokens),
                  treated as a constant.
        divergence: ``fn(t_logp [C, V], s_logp [C, V]) -> [C]`` with its hyperparameters bound
            (``node.divergence()`` of a ``loss=`` config node).
        labels:   [N] int64 next-token ids for the CE term, -100 = ignore.
        ce_coef:  [N] per-token CE coefficient (0 where ignored); required with labels.
        chunk_size: tokens per chunk; peak extra memory is a few [chunk_size, V] fp32 tensors.
        cached:   a teacher cache's rows for the N tokens instead of t_hidden / t_head (pass None for
                  both): top-k log-probs, ids and tail sums (the divergence over the partition {top-k}
                  ∪ {tail bucket}, ``losses.cached``) or an exact head with draws from the tail (an
                  unbiased estimate, ``losses.sampled``); both exact when k = V.
        t_logits: [N, V] the teacher's logits, already computed (``chunked_token_stats(keep_teacher_logits=
                  True)``, any float dtype): used instead of the t_hidden @ t_head matmul, which is then
                  skipped (t_hidden and t_head are still checked for shapes).
        consume_t_logits: the caller hands t_logits over: the loss may overwrite them (no copy per chunk).

    Returns:
        (div_sum, ce_sum), scalar fp32: div_sum = Σ_i coef_i · τ_i² · D(p_i^τ ‖ q_i^τ) and
        ce_sum = Σ_i ce_coef_i · CE_i at T = 1 (a zero tensor if labels is None). Both are
        differentiable w.r.t. s_hidden and s_head. Sums, not means: the caller divides by the
        global Σw of the optimizer step (DESIGN §3). Tokens whose coef and ce_coef are both 0
        are skipped; if all are, both sums are exactly 0 with zero gradients.
    """
    if (cached is None) == (t_hidden is None):
        raise ValueError("chunked_distill_loss: give the teacher as t_hidden and t_head, or as cached rows")
    _check_inputs(s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, chunk_size)
    if t_logits is not None and (cached is not None or tuple(t_logits.shape) != (s_hidden.shape[0], s_head.shape[0])):
        raise ValueError(f"chunked_distill_loss: t_logits must be [N, V] = [{s_hidden.shape[0]}, {s_head.shape[0]}] "
                         f"with a live teacher, got {tuple(t_logits.shape)}")
    if cached is not None and cached.logp.shape[0] != s_hidden.shape[0]:
        raise ValueError(f"chunked_distill_loss: {cached.logp.shape[0]} cached teacher rows for "
                         f"{s_hidden.shape[0]} student tokens")
    ce_coef = None if ce_coef is None else ce_coef.detach()
    args = (s_hidden, s_head, t_hidden, t_head, tau.detach(), coef.detach(), labels, ce_coef)
    args += (divergence, chunk_size, cached, t_logits, consume_t_logits)

    needs_grad = torch.is_grad_enabled() and (s_hidden.requires_grad or s_head.requires_grad)
    if needs_grad:
        return _ChunkedDistillFn.apply(*args)
    # Value only (evaluation, or a frozen student): skip the gradient work of the forward pass.
    with torch.no_grad(), torch.autocast(device_type=s_hidden.device.type, enabled=False):
        div_sum, ce_sum, *_ = _chunk_loop(*args, with_grads=False)
    return div_sum, ce_sum


def entropy_at(logits: Tensor, temp: float, consume: bool = False, normalized: bool = False) -> Tensor:
    """H(softmax(logits / temp)) [C] from logits [C, V]: the same values as
    ``entropy(log_softmax(logits / temp))``, in three to five passes over the vocabulary.
    consume=True may overwrite logits. normalized=True: `logits` are already log-probabilities (otherwise
    they are normalised first). The one entropy of the project: the live statistics pass and ``egad cache``
    both call it.

    With x = logits − c (the row max keeps exp from overflowing), a = 1/temp, e = exp(a·x), z = Σ e and
    d = Σ e·x: H = log z − a · d / z (``entropy_from_moments``; ``egad cache`` gets z and d from its power
    sums where 1/temp is on their basis, ``losses.cached.split_tail``)."""
    a = 1.0 / temp
    if not normalized:  # through log p first, so that live and cached entropies are the same bits
        logits = torch.log_softmax(logits, dim=-1, out=logits) if consume else torch.log_softmax(logits, dim=-1)
        consume = True  # a tensor of our own now
    if temp == 1.0:
        x = logits  # log p ≤ 0, the largest ≥ −log V: exp neither over- nor underflows
    else:
        shift = logits.amax(dim=-1, keepdim=True)  # [C, 1]
        x = logits.sub_(shift) if consume else logits - shift  # [C, V], ≤ 0
    e = torch.mul(x, a).exp_() if a != 1.0 else torch.exp(x)  # [C, V] ≤ 1
    z = e.sum(dim=-1)  # [C], ≥ the largest e
    d = rowdot(e, x)  # [C]; nan in a row where x = -inf (a masked id: e = 0, and 0 · -inf is nan)
    bad = ~torch.isfinite(d)
    if bad.any():  # 0 · log 0 = 0, as `entropy` takes it
        d[bad] = (e[bad] * x[bad]).nan_to_num_(nan=0.0).sum(dim=-1)
    return entropy_from_moments(z, d, a)


@torch.no_grad()
def chunked_token_stats(
    t_hidden: Tensor,
    t_head: Tensor,
    s_hidden: Tensor | None = None,
    s_head: Tensor | None = None,
    *,
    teacher_entropy_temps: tuple[float, ...] = (1.0,),
    student_entropy_temps: tuple[float, ...] = (),
    hellinger: bool = False,
    teacher_nll_labels: Tensor | None = None,
    keep_teacher_logits: bool = False,
    chunk_size: int = 1024,
) -> dict[str, Tensor]:
    """Per-token statistics the policies need (entropies, Hellinger), chunked like the loss.

    Args:
        t_hidden: [N, Dt], t_head: [V, Dt] teacher final hidden states / sliced lm_head.
        s_hidden: [N, Ds], s_head: [V, Ds] student ones; needed for student entropies / hellinger.
        teacher_entropy_temps / student_entropy_temps: temperatures T at which to compute
            H(softmax(logits / T)) (EGAD uses T = 1 for the teacher; EA-KD T' = 2 for both).
        hellinger: Hellinger distance between teacher and student at T = 1 (AdaKD difficulty).
        teacher_nll_labels: [N] int64 ids, -100 = ignore; adds "teacher_nll" (0 where ignored).
        keep_teacher_logits: adds "teacher_logits" [N, V], the teacher's logits as the matmul made them
            (its dtype), for ``chunked_distill_loss(t_logits=...)`` to skip a second head matmul.

    Returns:
        dict of [N] fp32 tensors: f"teacher_entropy@{T:g}", f"student_entropy@{T:g}",
        "hellinger", "teacher_nll" (only the requested ones), and "teacher_logits". No gradients.
    """
    need_student = bool(student_entropy_temps) or hellinger
    if need_student and (s_hidden is None or s_head is None):
        raise ValueError("student_entropy_temps / hellinger need s_hidden and s_head")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for temp in (*teacher_entropy_temps, *student_entropy_temps):
        if temp <= 0:
            raise ValueError(f"entropy temperatures must be > 0, got {temp}")

    n, device = t_hidden.shape[0], t_hidden.device
    out: dict[str, Tensor] = {}
    for temp in teacher_entropy_temps:
        out[f"teacher_entropy@{temp:g}"] = torch.empty(n, dtype=torch.float32, device=device)
    for temp in student_entropy_temps:
        out[f"student_entropy@{temp:g}"] = torch.empty(n, dtype=torch.float32, device=device)
    if hellinger:
        out["hellinger"] = torch.empty(n, dtype=torch.float32, device=device)
    if teacher_nll_labels is not None:
        out["teacher_nll"] = torch.empty(n, dtype=torch.float32, device=device)

    t_dt = _matmul_dtype(t_hidden, t_head)
    w_t = t_head.to(t_dt)  # [V, Dt]
    if keep_teacher_logits:
        out["teacher_logits"] = torch.empty(n, t_head.shape[0], dtype=t_dt, device=device)
    if need_student:
        s_dt = _matmul_dtype(s_hidden, s_head)
        w_s = s_head.to(s_dt)  # [V, Ds]

    with torch.autocast(device_type=device.type, enabled=False):
        for start in range(0, n, chunk_size):
            sl = slice(start, min(start + chunk_size, n))
            if keep_teacher_logits:  # the matmul writes straight into the kept rows
                raw = torch.matmul(t_hidden[sl].to(t_dt), w_t.T, out=out["teacher_logits"][sl])  # [C, V]
            else:
                raw = t_hidden[sl].to(t_dt) @ w_t.T  # [C, V]
            t_logits = raw.float()  # [C, V]: the matmul's output, or its fp32 copy
            # t_logits may be overwritten by the last entropy unless it is read again below, or is the kept rows
            reused = teacher_nll_labels is not None or hellinger or t_logits is raw and keep_teacher_logits
            for i, temp in enumerate(teacher_entropy_temps):
                last = i == len(teacher_entropy_temps) - 1 and not reused
                out[f"teacher_entropy@{temp:g}"][sl] = entropy_at(t_logits, temp, consume=last)
            if teacher_nll_labels is not None:
                lab = teacher_nll_labels[sl]  # [C]
                out["teacher_nll"][sl] = F.cross_entropy(
                    t_logits, lab, reduction="none", ignore_index=IGNORE_INDEX
                )
            if need_student:
                s_logits = (s_hidden[sl].to(s_dt) @ w_s.T).float()  # [C, V]
                for i, temp in enumerate(student_entropy_temps):
                    last = i == len(student_entropy_temps) - 1 and not hellinger
                    out[f"student_entropy@{temp:g}"][sl] = entropy_at(s_logits, temp, consume=last)
                if hellinger:
                    out["hellinger"][sl] = hellinger_distance(
                        torch.log_softmax(t_logits, dim=-1), torch.log_softmax(s_logits, dim=-1)
                    )
    return out
