"""Held-out per-token metrics of a student against its teacher, computed in token chunks."""

from __future__ import annotations

import torch
from torch import Tensor

from egad_cli.data.packing import Packed
from egad_cli.engine.runtime import Runtime
from egad_cli.losses.divergences import entropy, forward_kl, reverse_kl
from egad_cli.ui.progress import pass_progress


@torch.no_grad()
def token_metrics(t_logits: Tensor, s_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-token metrics from fp32 logits [N, V] and next-token ids [N]; every value is [N]."""
    t_logp, s_logp = t_logits.float().log_softmax(-1), s_logits.float().log_softmax(-1)
    s_conf, s_pred = s_logp.max(-1)
    t_pred = t_logp.argmax(-1)
    return {
        "kl_forward": forward_kl(t_logp, s_logp),
        "kl_reverse": reverse_kl(t_logp, s_logp),
        "nll_teacher": -t_logp.gather(1, targets[:, None]).squeeze(1),
        "nll_student": -s_logp.gather(1, targets[:, None]).squeeze(1),
        "top1_agree": (s_pred == t_pred).float(),
        "confidence": s_conf.exp(),
        "correct": (s_pred == targets).float(),
        "entropy_teacher": entropy(t_logp),
        "entropy_student": entropy(s_logp),
    }


@torch.no_grad()
def collect_token_metrics(teacher, student, vocab: int, val: Packed, runtime: Runtime, batch_size: int,
                          max_tokens: int = 0, chunk_size: int = 1024, progress: bool = False,
                          console=None) -> dict[str, Tensor]:
    """Every valid held-out token's metrics, concatenated: {name: [N_valid]} (on CPU)."""
    n_blocks = len(val) if max_tokens <= 0 else max(1, min(len(val), max_tokens // val.ids.shape[1]))
    out: dict[str, list[Tensor]] = {}
    student_was_training = student.training
    student.eval()
    bar = pass_progress("held-out pass", n_blocks, enabled=progress, console=console)
    with bar:
        task = bar.add_task("eval", total=n_blocks)
        for start in range(0, n_blocks, batch_size):
            ids = val.ids[start:min(n_blocks, start + batch_size)].to(runtime.device)
            mask = val.mask[start:min(n_blocks, start + batch_size)].to(runtime.device)
            targets, valid = ids[:, 1:].reshape(-1), mask[:, 1:].reshape(-1)
            with runtime.autocast():
                t_h = teacher.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
                s_h = student.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
            t_h, s_h = t_h.reshape(-1, t_h.shape[-1])[valid], s_h.reshape(-1, s_h.shape[-1])[valid]
            t_w = teacher.get_output_embeddings().weight[:vocab]
            s_w = student.get_output_embeddings().weight[:vocab]
            for c in range(0, t_h.shape[0], chunk_size):
                sl = slice(c, c + chunk_size)
                metrics = token_metrics(t_h[sl].float() @ t_w.float().T, s_h[sl].float() @ s_w.float().T,
                                        targets[valid][sl])
                for k, v in metrics.items():
                    out.setdefault(k, []).append(v.cpu())
            bar.update(task, advance=ids.shape[0])
    student.train(student_was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def heldout_kl(teacher, student, vocab: int, val: Packed, runtime: Runtime, batch_size: int, max_tokens: int,
               chunk_size: int = 1024) -> float:
    """Mean forward KL(teacher ‖ student) per held-out token, in nats."""
    metrics = collect_token_metrics(teacher, student, vocab, val, runtime, batch_size, max_tokens, chunk_size)
    return float(metrics["kl_forward"].mean())
