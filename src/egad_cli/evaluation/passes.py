"""No-grad passes over packed blocks: per-token teacher (and optional student) values, chunked."""

from __future__ import annotations

import torch
from torch import Tensor

from egad_cli.data.packing import Packed
from egad_cli.engine.runtime import Runtime
from egad_cli.errors import UserError
from egad_cli.evaluation.metrics import token_metrics
from egad_cli.losses.divergences import entropy
from egad_cli.models.documents import base_forward
from egad_cli.teacher_cache.manifest import cache_kind
from egad_cli.teacher_cache.use import exact_hint
from egad_cli.ui.progress import pass_progress


def spread_blocks(data: Packed, max_tokens: int) -> Packed:
    """At most ``max_tokens`` tokens of blocks, evenly spaced over the split (0 = every block).

    Documents are packed one after another, so the first blocks would often come from one or
    two files; evenly spaced blocks sample the whole split at the same cost.
    """
    if len(data) == 0:
        return data
    index = spread_index(len(data), data.ids.shape[1], max_tokens)
    return Packed(ids=data.ids[index], mask=data.mask[index], extra={k: v[index] for k, v in data.extra.items()})


def spread_index(n: int, block: int, max_tokens: int) -> Tensor:
    """The block indices ``spread_blocks`` keeps out of n blocks of `block` tokens."""
    k = n if max_tokens <= 0 else max(1, min(n, max_tokens // block))
    return torch.linspace(0, n - 1, k).round().long() if k < n else torch.arange(n)


def _teacher_only(t_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The teacher's share of ``token_metrics`` plus its top-1.

    t_logits: [n, V] fp32, targets: [n] -> {name: [n]}.
    """
    t_logp = t_logits.log_softmax(-1)
    t_max, t_pred = t_logp.max(-1)
    return {"entropy_teacher": entropy(t_logp), "nll_teacher": -t_logp.gather(1, targets[:, None]).squeeze(1),
            "confidence_teacher": t_max.exp(), "correct_teacher": (t_pred == targets).float()}


def _teacher_top1(t_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """The teacher's top-1 probability exp(max − logsumexp) and whether its top-1 is the label."""
    t_max, t_pred = t_logits.max(-1)
    return {"confidence_teacher": (t_max - torch.logsumexp(t_logits, -1)).exp(),
            "correct_teacher": (t_pred == targets).float()}


class StoredTeacher:
    """An exact teacher cache's split as ``token_pass``'s teacher: the final states it stored for the blocks
    `index` [B] of the split (reader: an exact ``teacher_cache.SplitReader``), and its head. token_pass is then
    given those blocks (``data`` = the split's blocks `index`), and the teacher is read, not run."""

    def __init__(self, reader, index: Tensor):
        if not reader.exact:
            raise UserError(f"teacher_cache: {reader.root} is a {cache_kind(reader.manifest)} cache, which holds "
                            f"estimates of the teacher's distribution, not the distribution: drop teacher_cache to "
                            f"run the teacher, or build an exact cache: {exact_hint(reader.manifest)}")
        self.reader, self.index = reader, index

    def final_states(self, sl: slice, ids: Tensor, device) -> Tensor:
        """[b, L-1, D] fp32: the stored final states of blocks sl of `index` (ids: their tokens [b, L])."""
        b, length = ids.shape
        return self.reader.rows(self.index[sl], device)["hidden"].reshape(b, length - 1, -1)

    def head(self, vocab: int, device) -> Tensor:
        """[vocab, D] in the dtype the stored fp32 states meet it in (as the chunked loss and cached_heldout_kl)."""
        head = self.reader.head
        return head[:vocab].to(device, torch.promote_types(torch.float32, head.dtype))


@torch.no_grad()
def token_pass(teacher, vocab: int, data: Packed, runtime: Runtime, batch_size: int, chunk_size: int = 1024,
               student=None, progress: bool = True, console=None, description: str = "teacher pass"
               ) -> dict[str, Tensor]:
    """Every valid token's values, concatenated on the CPU: {name: [N]}. teacher: a model, or a
    ``StoredTeacher`` (an exact cache's final states for exactly the blocks of ``data``: no teacher runs).

    Always: ``block``, ``position`` (index of the context's last token in its block; the model saw
    position + 1 tokens), ``target`` (the next-token label), ``entropy_teacher``, ``nll_teacher``,
    ``confidence_teacher`` and ``correct_teacher`` (the teacher's top-1 probability and whether its
    top-1 is the label). With a student, also the keys of ``evaluation.metrics.token_metrics``
    (``kl_forward``, ``kl_reverse``, ``nll_student``, ``top1_agree``, ``confidence``/``correct`` of
    the student, ``entropy_student``). Logits are sliced to the shared vocabulary and computed in
    fp32, ``chunk_size`` tokens at a time, from the final hidden states and the lm_head.
    """
    if len(data) == 0:
        raise UserError("the selected split has no blocks; add text or lower dataset.block_size")
    n_blocks, block = data.ids.shape
    positions = torch.arange(block - 1).expand(n_blocks, -1)
    blocks = torch.arange(n_blocks)[:, None].expand(-1, block - 1)
    out: dict[str, list[Tensor]] = {}
    student_was_training = student.training if student is not None else False
    if student is not None:
        student.eval()
    stored = isinstance(teacher, StoredTeacher)
    # lm_head rows sliced to the shared vocabulary, fp32 once (a no-op for fp32 weights)
    t_w = teacher.head(vocab, runtime.device) if stored else teacher.get_output_embeddings().weight[:vocab].float()
    s_w = student.get_output_embeddings().weight[:vocab].float() if student is not None else None
    bar = pass_progress(description, n_blocks, enabled=progress, console=console)
    with bar:
        task = bar.add_task(description, total=n_blocks)
        for start in range(0, n_blocks, batch_size):
            sl = slice(start, min(n_blocks, start + batch_size))
            ids = data.ids[sl].to(runtime.device)
            valid = data.mask[sl, 1:].reshape(-1)
            cpu_valid, valid = valid, valid.to(runtime.device)
            targets = ids[:, 1:].reshape(-1)[valid]
            with runtime.autocast():
                t_h = teacher.final_states(sl, ids, runtime.device) if stored else \
                    base_forward(teacher, ids).last_hidden_state[:, :-1]
                s_h = base_forward(student, ids).last_hidden_state[:, :-1] \
                    if student is not None else None
            t_h = t_h.reshape(-1, t_h.shape[-1])[valid]
            if s_h is not None:
                s_h = s_h.reshape(-1, s_h.shape[-1])[valid]
            out.setdefault("block", []).append(blocks[sl].reshape(-1)[cpu_valid])
            out.setdefault("position", []).append(positions[sl].reshape(-1)[cpu_valid])
            out.setdefault("target", []).append(targets.cpu())
            for c in range(0, t_h.shape[0], chunk_size):
                cs = slice(c, c + chunk_size)
                t_logits = t_h[cs].float() @ t_w.T  # [n, V] fp32
                if s_h is None:
                    metrics = _teacher_only(t_logits, targets[cs])
                else:
                    metrics = token_metrics(t_logits, s_h[cs].float() @ s_w.T, targets[cs])
                    metrics.update(_teacher_top1(t_logits, targets[cs]))
                for k, v in metrics.items():
                    out.setdefault(k, []).append(v.float().cpu())
            bar.update(task, advance=ids.shape[0])
    if student is not None:
        student.train(student_was_training)
    result = {k: torch.cat(v) for k, v in out.items()}
    if result["target"].numel() == 0:
        raise UserError("the selected blocks hold no valid (loss) tokens: every token is masked out "
                        "(for dataset=jsonl, check that the responses are not empty)")
    return result


def heldout_blocks(n_blocks: int, block_size: int, max_tokens: int) -> int:
    """How many of the first held-out blocks make `max_tokens` (0 = all; at least one)."""
    return n_blocks if max_tokens <= 0 else max(1, min(n_blocks, max_tokens // block_size))


def heldout_kl(teacher, student, vocab: int, val: Packed, runtime: Runtime, batch_size: int, max_tokens: int,
               chunk_size: int = 1024) -> float:
    """Mean forward KL(teacher ‖ student) per valid token over the first blocks of the held-out split
    worth `max_tokens` (0 = all): the before/after number `egad distill` prints."""
    n = heldout_blocks(len(val), val.ids.shape[1], max_tokens)
    first = Packed(ids=val.ids[:n], mask=val.mask[:n])
    values = token_pass(teacher, vocab, first, runtime, batch_size, chunk_size, student=student, progress=False)
    return float(values["kl_forward"].mean())


@torch.no_grad()
def cached_heldout_kl(student, vocab: int, val, runtime: Runtime, batch_size: int, max_tokens: int,
                      chunk_size: int = 1024) -> tuple[float, float | None]:
    """``heldout_kl`` against a teacher cache (val: a ``teacher_cache.SplitReader``), over the same blocks:
    (mean forward KL per valid token, its standard error or None).

    A sampled cache gives each token's KL as an unbiased estimate (``losses.sampled``); the standard error
    is the tokens' sample standard deviation over √n: it covers both the draws' noise and the spread
    between tokens (the error of the held-out *average*, conservative for these fixed blocks). A top-k
    cache gives the bucketed KL, a deterministic lower bound of the full one (no error bar to give). An exact
    cache gives the live value: the teacher's distribution from its stored final states and head."""
    from egad_cli.losses import forward_kl

    n = heldout_blocks(val.n_blocks, val.block_size, max_tokens)
    data = val.packed()
    head = student.get_output_embeddings().weight[:vocab]
    # an exact cache's head [V, Dt], once, in the dtype its stored fp32 states meet it in (as the chunked loss does)
    t_head = val.head.to(runtime.device, torch.promote_types(torch.float32, val.head.dtype)) if val.exact else None
    was_training = student.training
    student.eval()
    values = []
    for start in range(0, n, batch_size):
        blocks = torch.arange(start, min(n, start + batch_size))
        ids = data.ids[blocks].to(runtime.device)
        valid = data.mask[blocks, 1:].reshape(-1).to(runtime.device)  # [N]
        with runtime.autocast():
            hidden = base_forward(student, ids).last_hidden_state[:, :-1]
        hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, Ds]
        rows = val.rows(blocks, runtime.device)
        dt = torch.promote_types(hidden.dtype, head.dtype)
        for c in range(0, hidden.shape[0], chunk_size):
            r = torch.arange(c, min(c + chunk_size, hidden.shape[0]), device=hidden.device)  # [C]
            z = (hidden[r].to(dt) @ head.to(dt).T).float()  # [C, V]
            if val.exact:  # the live computation (token_metrics' kl_forward) on the stored states
                t_logits = rows["hidden"][r].to(t_head.dtype) @ t_head.T  # [C, V]
                d = forward_kl(t_logits.float().log_softmax(-1), z.log_softmax(-1))  # [C]
            else:
                d = rows["top"].rows(r).divergence(z, torch.ones(r.numel(), device=z.device), forward_kl)  # [C]
            values.append(d[valid[r]].double().cpu())
    student.train(was_training)
    kl = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    if kl.numel() == 0:
        raise UserError("the held-out blocks of the teacher cache hold no valid (loss) tokens")
    se = float(kl.std() / kl.numel() ** 0.5) if val.sampled and kl.numel() > 1 else None
    return float(kl.mean()), se


def cached_token_pass(reader, index: Tensor) -> dict[str, Tensor]:
    """``token_pass``'s teacher values for the blocks `index` [B] of a teacher cache's split (reader: a
    ``teacher_cache.SplitReader``), read, not computed: ``block`` (position in `index`), ``position``,
    ``target``, ``entropy_teacher`` (the stored exact entropy at T = 1) and the teacher's top-1
    ``confidence_teacher`` / ``correct_teacher`` (the top-1 is always among the cached top-k; an exact cache's
    from its states through its head)."""
    data = reader.packed()
    ids, mask = data.ids[index], data.mask[index]  # [B, L]
    rows = reader.rows(index, torch.device("cpu"))
    valid = mask[:, 1:].reshape(-1)  # [N]
    b, length = ids.shape
    if reader.exact:
        top_logp, top_id = _top1(rows["hidden"], reader.head)
    else:
        top_logp, top_id = rows["top"].logp[:, 0], rows["top"].ids[:, 0]
    targets = ids[:, 1:].reshape(-1)
    out = {"block": torch.arange(b)[:, None].expand(-1, length - 1).reshape(-1),
           "position": torch.arange(length - 1).expand(b, -1).reshape(-1), "target": targets,
           "entropy_teacher": rows["entropy"][1.0], "confidence_teacher": top_logp.exp(),
           "correct_teacher": (top_id == targets).float()}
    out = {k: v[valid] for k, v in out.items()}
    if out["target"].numel() == 0:
        raise UserError("the selected blocks hold no valid (loss) tokens: every token is masked out")
    return out


def _top1(hidden: Tensor, head: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The teacher's most likely next token and its log-probability [N] each, from final states [N, D] and its
    head [V, D], chunk by chunk."""
    logps, ids = [], []
    dt = torch.promote_types(hidden.dtype, head.dtype)
    for c in range(0, hidden.shape[0], chunk_size):
        logp = (hidden[c:c + chunk_size].to(dt) @ head.to(dt).T).float().log_softmax(-1)  # [C, V]
        best = logp.max(dim=-1)
        logps.append(best.values)
        ids.append(best.indices)
    return torch.cat(logps), torch.cat(ids)
