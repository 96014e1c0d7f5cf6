"""Held-out metrics that compare across tokenizers.

Two models with different tokenizers predict different units, so per-token perplexities are not comparable.
What is:

* **bits per byte**: Σ NLL of a model's next tokens / (ln 2 · the UTF-8 bytes of text those tokens add, read
  from the offsets, not what each id spells alone) over the same held-out text, each model on its own tokenisation. Special tokens (the EOS between documents) spell no byte;
  their NLL is counted (predicting a document's end is part of modelling the text), the same way on both sides.
  Same-tokenizer runs report it too, counted the same way (``target_bytes``), so both kinds of run sit in one
  ``egad report``;
* at the **aligned positions** (``data.alignment``: both tokenisations end at the same byte, so both models
  predict the text after that byte from the same text before it): KL(teacher ‖ student) and KL(student ‖ teacher)
  over the shared token strings plus one bucket for the rest of each model's mass (conditioned on the shared
  strings instead when one vocabulary is mapped whole: ``losses.cross_vocab``), at
  T = 1; top-1 agreement on mapped tokens (over the pairs whose teacher argmax is a shared string: the share
  where the student's argmax is the same string); each model's entropy, NLL of its own next token, confidence and
  correctness, so the usual summaries and teacher-entropy deciles (``evaluation.metrics``) apply unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from egad_cli.data.packing import Packed
from egad_cli.engine.runtime import Runtime
from egad_cli.errors import UserError
from egad_cli.losses.cross_vocab import VocabMap, bucket_logp
from egad_cli.losses.divergences import entropy, forward_kl, reverse_kl
from egad_cli.models.documents import base_forward


def bits_per_byte(nll_sum: float, n_bytes: int) -> float:
    """Σ NLL (nats) over the bytes of text the predicted tokens add, in bits per byte; nan for no byte."""
    return nll_sum / (math.log(2) * n_bytes) if n_bytes > 0 else math.nan


def target_bytes(data: Packed, metrics: dict[str, Tensor], tokenizer) -> Tensor:
    """[N] the text bytes each evaluated target adds (``token_pass``'s rows: ``block``, ``position``): the
    blocks' own ``text_bytes`` (``data.packing.pack``, from the offsets), as a cross-tokenizer run counts them; a
    slow tokenizer gives no offsets, and then what each id spells alone (``models.token_bytes.byte_lengths``)."""
    if "text_bytes" in data.extra:
        return data.extra["text_bytes"][metrics["block"], metrics["position"] + 1].long()
    from egad_cli.models.token_bytes import byte_lengths

    return byte_lengths(tokenizer)[metrics["target"].cpu()]


@torch.no_grad()
def cross_token_pass(teacher, student, vmap: VocabMap, data: Packed, runtime: Runtime, batch_size: int,
                     chunk_size: int = 1024) -> tuple[dict[str, Tensor], dict]:
    """Per aligned pair, the keys of ``evaluation.metrics.token_metrics`` ({name: [N]} on the CPU), and the
    whole-text totals {bits_per_byte_student, bits_per_byte_teacher, aligned_share, bytes}.

    data: a cross-tokenizer split (``data.alignment.pack_pair``: ids are the student's, extra holds t_ids,
    t_mask and t_index, and s_bytes / t_bytes: the bytes of the text each token adds). Bits per byte divide by
    those, the text's own bytes, rather than by what each id spells alone: a SentencePiece tokenizer's first
    token of a document spells a space ("▁Hello") that is not in the text.
    """
    if len(data) == 0:
        raise UserError("the selected split has no blocks; add text or lower dataset.block_size")
    t_w = teacher.get_output_embeddings().weight[:vmap.t_vocab].float()  # [Vt, Dt]
    s_w = student.get_output_embeddings().weight[:vmap.s_vocab].float()  # [Vs, Ds]
    t_unmapped, s_unmapped = vmap.unmapped("t", t_w.device), vmap.unmapped("s", s_w.device)
    t_ids_map, s_ids_map = vmap.t_ids.to(t_w.device), vmap.s_ids.to(s_w.device)
    # teacher id -> student id of the same string (-1: none), to compare the two argmaxes
    to_student = torch.full((vmap.t_vocab,), -1, dtype=torch.long, device=t_w.device)
    to_student[t_ids_map] = s_ids_map
    was_training = student.training
    student.eval()
    out: dict[str, list[Tensor]] = {}
    totals = {"nll_s": 0.0, "bytes_s": 0, "nll_t": 0.0, "bytes_t": 0, "pairs": 0, "s_tokens": 0}
    for start in range(0, len(data), batch_size):
        sl = slice(start, min(len(data), start + batch_size))
        s_ids, s_mask = data.ids[sl].to(runtime.device), data.mask[sl].to(runtime.device)
        t_ids, t_mask = data.extra["t_ids"][sl].to(runtime.device), data.extra["t_mask"][sl].to(runtime.device)
        t_index = data.extra["t_index"][sl].to(runtime.device)  # [B, Ls-1]
        with runtime.autocast():
            s_h = base_forward(student, s_ids).last_hidden_state[:, :-1]  # [B, Ls-1, Ds]
            t_h = base_forward(teacher, t_ids).last_hidden_state[:, :-1]  # [B, Lt-1, Dt]
        s_h, t_h = s_h.reshape(-1, s_h.shape[-1]).float(), t_h.reshape(-1, t_h.shape[-1]).float()
        s_valid, t_valid = s_mask[:, 1:].reshape(-1), t_mask[:, 1:].reshape(-1)
        s_tgt, t_tgt = s_ids[:, 1:].reshape(-1), t_ids[:, 1:].reshape(-1)
        # whole-text NLL of each model on its own tokens (bits per byte), chunk by chunk
        s_nb, t_nb = data.extra["s_bytes"][sl, 1:].reshape(-1), data.extra["t_bytes"][sl, 1:].reshape(-1)  # [N]
        for h, w, tgt, valid, side, nbytes in ((s_h, s_w, s_tgt, s_valid, "s", s_nb),
                                               (t_h, t_w, t_tgt, t_valid, "t", t_nb)):
            rows = valid.nonzero().squeeze(1)
            for c in range(0, rows.numel(), chunk_size):
                r = rows[c:c + chunk_size]
                nll = torch.nn.functional.cross_entropy(h[r] @ w.T, tgt[r], reduction="none")
                totals[f"nll_{side}"] += float(nll.double().sum())
                totals[f"bytes_{side}"] += int(nbytes[r.cpu()].sum())
        totals["s_tokens"] += int(s_valid.sum())
        # the aligned pairs
        s_rows = ((t_index.reshape(-1) >= 0) & s_valid).nonzero().squeeze(1)  # [N]
        blocks = torch.div(s_rows, s_ids.shape[1] - 1, rounding_mode="floor")
        t_rows = blocks * (t_ids.shape[1] - 1) + t_index.reshape(-1)[s_rows]  # [N]
        totals["pairs"] += int(s_rows.numel())
        for c in range(0, s_rows.numel(), chunk_size):
            sr, tr = s_rows[c:c + chunk_size], t_rows[c:c + chunk_size]
            t_logp = (t_h[tr] @ t_w.T).log_softmax(-1)  # [n, Vt]
            s_logp = (s_h[sr] @ s_w.T).log_softmax(-1)  # [n, Vs]
            t_b = bucket_logp(t_logp, t_ids_map, t_unmapped, vmap.rest_bucket)  # [n, K (+ 1)]
            s_b = bucket_logp(s_logp, s_ids_map, s_unmapped, vmap.rest_bucket)
            s_conf, s_pred = s_logp.max(-1)
            t_conf, t_pred = t_logp.max(-1)
            mapped_pred = to_student[t_pred]  # [n] the student id of the teacher's argmax string, or -1
            metrics = {
                "kl_forward": forward_kl(t_b, s_b), "kl_reverse": reverse_kl(t_b, s_b),
                "nll_teacher": -t_logp.gather(1, t_tgt[tr, None]).squeeze(1),
                "nll_student": -s_logp.gather(1, s_tgt[sr, None]).squeeze(1),
                # nan where the teacher's argmax has no shared string: pair_summary leaves those out of the mean
                "top1_agree": torch.where(mapped_pred >= 0, (s_pred == mapped_pred).float(),
                                          torch.full_like(s_conf, math.nan)),
                "confidence": s_conf.exp(), "correct": (s_pred == s_tgt[sr]).float(),
                "confidence_teacher": t_conf.exp(), "correct_teacher": (t_pred == t_tgt[tr]).float(),
                "entropy_teacher": entropy(t_logp), "entropy_student": entropy(s_logp),
            }
            for k, v in metrics.items():
                out.setdefault(k, []).append(v.float().cpu())
    student.train(was_training)
    if totals["pairs"] == 0:
        raise UserError("cross-tokenizer evaluation: no position of the held-out blocks aligns between the two "
                        "tokenizers (see cross.min_aligned); nothing to compare")
    values = {k: torch.cat(v) for k, v in out.items()}
    overall = {"bits_per_byte_student": bits_per_byte(totals["nll_s"], totals["bytes_s"]),
               "bits_per_byte_teacher": bits_per_byte(totals["nll_t"], totals["bytes_t"]),
               "aligned_share": totals["pairs"] / max(totals["s_tokens"], 1),
               "bytes": totals["bytes_s"]}
    return values, overall
