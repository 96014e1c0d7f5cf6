"""The logit loss between two models with different vocabularies, at aligned positions (``data.alignment``).

At an aligned pair both models predict the text after the same byte, each over its own vocabulary. The two
distributions are compared in two parts:

* **mapped**: the K token strings both vocabularies hold (``vocab_map``: equal UTF-8 bytes, plus EOS ↔ EOS) are
  the same outcome on both sides. Each model's distribution (at the pair's temperature τ) is reduced to K + 1
  buckets: its K shared entries and one bucket with the rest of its mass, the way the teacher cache's tail bucket
  works (``losses.cached``). The run's divergence D (any of ``loss=``) is taken over those buckets, weighted
  w · τ² like the same-tokenizer loss. When one vocabulary is mapped whole (the other's tokenizer plus an added
  ``[PAD]``, say), that side can never put mass in the rest bucket: a bucket of probability 0 against the other
  side's positive one makes reverse KL (or forward KL, mirrored) infinite. Then there is no rest bucket: both
  distributions are compared over the K shared outcomes, the side with unmapped mass conditioned on them
  (renormalised), and the ULD term below is what pushes that unmapped mass towards the other side's none. With
  identical vocabularies K = V, nothing is unmapped and this *is* the same-tokenizer loss (tested to 1e-6 for
  every divergence).
* **ULD** (Boizard et al., 2024) for the mass that cannot be mapped: the L1 distance between the two models'
  unmapped probabilities, each sorted in decreasing order (the ``uld_top`` largest, zero-padded): a
  tokenizer-agnostic comparison of the shape of the rest of the distributions (how peaked, how spread), blind to
  which token is which, which the mapped part's one bucket cannot see. Weighted w only: it is a distance between
  probabilities (bounded by 2), not a log-ratio, so the τ² that restores a softened KL's gradient scale does
  not apply. ``cross.uld_weight`` scales it (default 1: at τ = 1 both terms are O(unmapped mass) where the
  rest bucket is large, and the mapped term dominates where it is small).

Memory and gradients follow ``losses.chunked``: the logits are formed ``chunk_size`` pairs at a time from the
hidden states and lm_heads, the gradient w.r.t. each chunk's student logits is taken in the forward pass (a
local autograd call: the bucketing is a gather plus one logsumexp) and pushed through the student's head by
hand, so no [N, V] tensor and nothing of the teacher is kept for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .chunked import _Grads, _matmul_dtype, _push, chunked_distill_loss
from .divergences import Divergence

__all__ = ["VocabMap", "bucket_logp", "cross_vocab_loss", "vocab_map"]


@dataclass(frozen=True)
class VocabMap:
    """The shared outcomes of two vocabularies: teacher id t_ids[k] and student id s_ids[k] spell the same bytes.

    t_ids, s_ids: [K] int64, each without repeats. t_vocab, s_vocab: the rows each model's logits are sliced
    to. identity: the two tokenizers are the same (K = V, t_ids = s_ids = arange(V)).
    """

    t_ids: Tensor
    s_ids: Tensor
    t_vocab: int
    s_vocab: int
    identity: bool = False

    def __post_init__(self):
        if self.t_ids.shape != self.s_ids.shape or self.t_ids.dim() != 1:
            raise ValueError(f"VocabMap: t_ids and s_ids must be [K], got {tuple(self.t_ids.shape)}, "
                             f"{tuple(self.s_ids.shape)}")
        for name, ids, v in (("t_ids", self.t_ids, self.t_vocab), ("s_ids", self.s_ids, self.s_vocab)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
                raise ValueError(f"VocabMap: {name} must lie in [0, {v})")
            if ids.unique().numel() != ids.numel():
                raise ValueError(f"VocabMap: {name} has repeated ids")

    @property
    def shared(self) -> int:
        return self.t_ids.numel()

    @property
    def rest_bucket(self) -> bool:
        """Whether each side's unmapped mass is one more outcome: only when both sides have unmapped ids (see the
        module docstring: a side mapped whole would give that outcome probability 0)."""
        return self.shared < self.t_vocab and self.shared < self.s_vocab

    def unmapped(self, side: str, device=None) -> Tensor:
        """[V] bool of the side ("t" or "s"): ids with no partner."""
        ids, v = (self.t_ids, self.t_vocab) if side == "t" else (self.s_ids, self.s_vocab)
        out = torch.ones(v, dtype=torch.bool, device=device)
        out[ids.to(device)] = False
        return out


def vocab_map(t_tok, s_tok, t_vocab: int, s_vocab: int) -> VocabMap:
    """Pair the ids of two tokenizers that spell the same bytes (``models.token_bytes``), and the two EOS ids.

    A byte string held by several ids of one vocabulary is paired through the id its tokenizer emits for it: a
    regular piece before a ``<0xNN>`` byte-fallback token (SentencePiece holds both ``▁`` and ``<0x20>`` for a
    space, and only ever emits ``▁``), else the lowest id; the others count as unmapped. Special tokens other than
    EOS are never paired."""
    from egad_cli.models.vocab import same_vocabulary

    if same_vocabulary(t_tok, s_tok) and t_vocab == s_vocab:
        ids = torch.arange(t_vocab)
        return VocabMap(ids, ids.clone(), t_vocab, s_vocab, identity=True)
    t_by_bytes, s_by_bytes = _ids_by_bytes(t_tok, t_vocab), _ids_by_bytes(s_tok, s_vocab)
    pairs = {t_by_bytes[b]: s_by_bytes[b] for b in t_by_bytes.keys() & s_by_bytes.keys()}  # teacher id -> student id
    t_eos, s_eos = t_tok.eos_token_id, s_tok.eos_token_id
    if t_eos is not None and s_eos is not None and t_eos < t_vocab and s_eos < s_vocab \
            and t_eos not in pairs and s_eos not in pairs.values():
        pairs[t_eos] = s_eos
    t_ids = torch.tensor(sorted(pairs), dtype=torch.int64)
    s_ids = torch.tensor([pairs[i] for i in sorted(pairs)], dtype=torch.int64)
    return VocabMap(t_ids, s_ids, t_vocab, s_vocab)


def _ids_by_bytes(tok, vocab: int) -> dict[bytes, int]:
    """bytes -> the one id that stands for them (see ``vocab_map``)."""
    from egad_cli.models.token_bytes import is_byte_fallback, token_bytes

    best: dict[bytes, tuple[bool, int]] = {}
    pieces = tok.convert_ids_to_tokens(list(range(vocab)))
    for i, b in enumerate(token_bytes(tok)[:vocab]):
        if b is None:
            continue
        rank = (is_byte_fallback(pieces[i]), i)
        if b not in best or rank < best[b]:
            best[b] = rank
    return {b: i for b, (_, i) in best.items()}


def bucket_logp(logp: Tensor, ids: Tensor, unmapped: Tensor, rest: bool = True) -> Tensor:
    """[C, V] log-probs -> the distribution over the shared outcomes: [C, K + 1], the shared entries then the rest
    of the mass (``rest``: ``VocabMap.rest_bucket``), or [C, K], the shared entries conditioned on being shared
    (renormalised; a side mapped whole is already normalised over them and is returned as it is)."""
    shared = logp.index_select(1, ids)  # [C, K]
    if rest:
        return torch.cat([shared, logp.masked_fill(~unmapped, -math.inf).logsumexp(-1, keepdim=True)], dim=1)
    if ids.numel() == logp.shape[1]:
        return shared
    return shared - shared.logsumexp(-1, keepdim=True)


def _sorted_rest(logp: Tensor, unmapped: Tensor, top: int) -> Tensor:
    """[C, V] log-probs -> [C, top]: the largest unmapped probabilities in decreasing order, zero-padded."""
    k = min(top, logp.shape[1])
    # select on log-probs, exponentiate only the k kept (exp is monotone; a masked entry's -inf becomes the 0 pad)
    vals = logp.masked_fill(~unmapped, -math.inf).topk(k, dim=1, sorted=True).values.exp()  # [C, k]
    return torch.nn.functional.pad(vals, (0, top - k)) if k < top else vals


def _chunk_terms(z: Tensor, t_logits: Tensor, tau_c: Tensor, coef_c: Tensor, fn: Divergence, vmap_dev: dict,
                 uld_top: int) -> tuple[Tensor, Tensor]:
    """The chunk's weighted sums (mapped, uld) from student logits z [C, Vs] and teacher logits [C, Vt]."""
    t_logp = torch.log_softmax(t_logits / tau_c, dim=-1)  # [C, Vt]
    s_logp = torch.log_softmax(z / tau_c, dim=-1)  # [C, Vs]
    rest = vmap_dev["rest"]
    d = fn(bucket_logp(t_logp, vmap_dev["t_ids"], vmap_dev["t_un"], rest),
           bucket_logp(s_logp, vmap_dev["s_ids"], vmap_dev["s_un"], rest))
    live = coef_c != 0
    mapped = torch.where(live, coef_c * tau_c.squeeze(1).square() * d, 0.0).sum()
    if uld_top == 0 or not vmap_dev["any_unmapped"]:
        return mapped, torch.zeros((), dtype=mapped.dtype, device=mapped.device)
    uld = (_sorted_rest(t_logp, vmap_dev["t_un"], uld_top) - _sorted_rest(s_logp, vmap_dev["s_un"], uld_top)).abs()
    return mapped, torch.where(live, coef_c * uld.sum(dim=1), 0.0).sum()


def _loop(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap: VocabMap, uld_top, chunk_size, t_logits,
          with_grads: bool):
    device = s_hidden.device
    rows = (coef != 0).nonzero().squeeze(1)  # [A]
    s_dt, t_dt = _matmul_dtype(s_hidden, s_head), _matmul_dtype(t_hidden, t_head)
    w_s, w_t = s_head.to(s_dt), t_head.to(t_dt)
    t_un, s_un = vmap.unmapped("t", device), vmap.unmapped("s", device)
    vmap_dev = {"t_ids": vmap.t_ids.to(device), "s_ids": vmap.s_ids.to(device), "t_un": t_un, "s_un": s_un,
                "any_unmapped": bool(t_un.any() or s_un.any()), "rest": vmap.rest_bucket}
    sums = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(2)]
    grads = None
    if with_grads:
        grads = [_Grads(h=torch.zeros(rows.numel(), s_head.shape[1], dtype=torch.float32, device=device),
                        w=torch.zeros(s_head.shape, dtype=torch.float32, device=device)) for _ in range(2)]
    for start in range(0, rows.numel(), chunk_size):
        r = rows[start:start + chunk_size]  # [C]
        h_s = s_hidden.index_select(0, r).to(s_dt)  # [C, Ds]
        tau_c = tau.index_select(0, r).float().unsqueeze(1)  # [C, 1]
        coef_c = coef.index_select(0, r).float()  # [C]
        t_c = t_logits.index_select(0, r).float() if t_logits is not None \
            else (t_hidden.index_select(0, r).to(t_dt) @ w_t.T).float()  # [C, Vt]
        z = (h_s @ w_s.T).float().requires_grad_(with_grads)  # [C, Vs], a local autograd leaf
        with torch.set_grad_enabled(with_grads):
            terms = _chunk_terms(z, t_c, tau_c, coef_c, fn, vmap_dev, uld_top)
        for k, term in enumerate(terms):
            sums[k] += term.detach()
            if with_grads and term.requires_grad:
                (g,) = torch.autograd.grad(term, z, retain_graph=k == 0)
                _push(g, None, grads[k], start, h_s, w_s)  # autograd weighted it already
    return sums[0], sums[1], rows, grads


class _CrossVocabFn(torch.autograd.Function):
    """(s_hidden, s_head, teacher..., weights) -> (mapped_sum, uld_sum), gradients precomputed in forward."""

    @staticmethod
    def forward(ctx, s_hidden, s_head, *rest):
        with torch.autocast(device_type=s_hidden.device.type, enabled=False):
            mapped, uld, rows, grads = _loop(s_hidden, s_head, *rest, with_grads=True)
        ctx.rows, ctx.grads = rows, grads
        ctx.h_shape, ctx.h_dtype, ctx.w_dtype = s_hidden.shape, s_hidden.dtype, s_head.dtype
        ctx.n_rest = len(rest)
        return mapped, uld

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_mapped: Tensor, g_uld: Tensor):
        (gm, gu) = ctx.grads
        grad_h = grad_w = None
        if ctx.needs_input_grad[0]:
            gh = torch.addcmul(gm.h * g_mapped, gu.h, g_uld)  # [A, Ds]
            grad_h = torch.zeros(ctx.h_shape, dtype=ctx.h_dtype, device=gh.device)
            grad_h.index_copy_(0, ctx.rows, gh.to(ctx.h_dtype))
        if ctx.needs_input_grad[1]:
            grad_w = torch.addcmul(gm.w * g_mapped, gu.w, g_uld).to(ctx.w_dtype)
        return (grad_h, grad_w) + (None,) * ctx.n_rest


def cross_vocab_loss(s_hidden: Tensor, s_head: Tensor, t_hidden: Tensor, t_head: Tensor, tau: Tensor, coef: Tensor,
                     divergence: Divergence, vmap: VocabMap, *, uld_weight: float = 1.0, uld_top: int = 256,
                     chunk_size: int = 1024, t_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The cross-tokenizer logit loss over N aligned pairs, as sums (the caller divides by the step's Σw).

    Args:
        s_hidden: [N, Ds] student final hidden states at the pairs; s_head: [Vs, Ds] its lm_head (sliced).
        t_hidden: [N, Dt] teacher final hidden states at the pairs; t_head: [Vt, Dt]; never get gradients.
        tau, coef: [N] temperature (> 0) and weight per pair (constants; 0 skips the pair).
        divergence: ``fn(t_logp [C, K+1], s_logp [C, K+1]) -> [C]`` (a ``loss=`` node's ``divergence()``).
        vmap: the shared token strings (``vocab_map``).
        uld_weight: 0 skips the ULD term's work (its sum is then 0); uld_top: unmapped entries it compares.
        t_logits: [N, Vt] the teacher's logits when the statistics pass kept them (skips the teacher matmul).

    Returns:
        (mapped_sum, uld_sum), fp32 scalars: Σ_i w_i τ_i² D(buckets(p_i^τ) ‖ buckets(q_i^τ)) and
        Σ_i w_i ‖sort(p_i^τ off the map)[:top] − sort(q_i^τ off the map)[:top]‖₁, differentiable w.r.t. s_hidden
        and s_head. With ``vmap.identity`` the mapped sum is the same-tokenizer ``chunked_distill_loss``.
    """
    n = s_hidden.shape[0]
    if t_hidden.shape[0] != n or tuple(tau.shape) != (n,) or tuple(coef.shape) != (n,):
        raise ValueError(f"cross_vocab_loss: {n} student rows, {t_hidden.shape[0]} teacher rows, tau "
                         f"{tuple(tau.shape)}, coef {tuple(coef.shape)}")
    if s_head.shape[0] != vmap.s_vocab or t_head.shape[0] != vmap.t_vocab:
        raise ValueError(f"cross_vocab_loss: heads have {s_head.shape[0]} / {t_head.shape[0]} rows, the map "
                         f"{vmap.s_vocab} / {vmap.t_vocab}")
    if uld_top < 0 or chunk_size < 1:
        raise ValueError(f"cross_vocab_loss: uld_top must be >= 0 and chunk_size >= 1 (got {uld_top}, {chunk_size})")
    if vmap.identity:  # one vocabulary: nothing is unmapped, the loss is the same-tokenizer one, on its fast path
        mapped, _ = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=divergence,
                                         chunk_size=chunk_size, t_logits=t_logits)
        return mapped, torch.zeros((), dtype=torch.float32, device=s_hidden.device)
    args = (t_hidden, t_head, tau.detach(), coef.detach(), divergence, vmap, uld_top if uld_weight else 0,
            chunk_size, t_logits)
    if torch.is_grad_enabled() and (s_hidden.requires_grad or s_head.requires_grad):
        return _CrossVocabFn.apply(s_hidden, s_head, *args)
    with torch.no_grad(), torch.autocast(device_type=s_hidden.device.type, enabled=False):
        mapped, uld, *_ = _loop(s_hidden, s_head, *args, with_grads=False)
    return mapped, uld
