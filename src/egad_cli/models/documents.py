"""Document masks for packed blocks (dataset.document_masks): a block holds the end of one document and the
start of the next (each ends with EOS); with the option on, every model pass restarts the positions at each
document and lets a token attend only to earlier tokens of its own document, as if each document had been
run alone. Off (the default), a block is one causal sequence, the usual packed pre-training layout.

The setting is attached to a model once, where it is loaded (``enable``), and every egad pass runs the
model through ``base_forward``: no pass has to thread it through its arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egad_cli.errors import UserError

_EOS_ATTR = "_egad_document_eos"


def enable(model: nn.Module, eos_id: int | None, key: str = "dataset.document_masks") -> None:
    """Run this model's passes with document masks, documents ending at `eos_id`."""
    if eos_id is None:
        raise UserError(f"{key}=true: the tokenizer has no EOS token, so a block's documents cannot be told apart; "
                        f"set {key}=false")
    setattr(model, _EOS_ATTR, int(eos_id))


def document_inputs(ids: Tensor, eos_id: int, attention: str) -> dict[str, Tensor]:
    """position_ids [B, L] restarting at each document, and (except for flash attention, which finds the
    documents from the position ids) an attention mask [B, 1, L, L]: query i may see key j iff j <= i and both
    are in the same document. A document starts at the block's first token and after every EOS."""
    b, length = ids.shape
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, :-1] == eos_id  # [B, L]
    index = torch.arange(length, device=ids.device).expand(b, length)  # [B, L]
    start_of_own = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values  # [B, L]
    out = {"position_ids": index - start_of_own}
    if attention == "flash_attention_2":
        return out
    doc = starts.long().cumsum(dim=1)  # [B, L] document number within the block
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()  # [L, L]
    allowed = (doc[:, :, None] == doc[:, None, :]) & causal  # [B, L, L]
    if attention == "eager":  # eager attention adds the mask to the scores
        mask = torch.zeros(allowed.shape, dtype=torch.float32, device=ids.device)
        out["attention_mask"] = mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
    else:  # SDPA (and the kernels that take its boolean masks): True = may attend
        out["attention_mask"] = allowed[:, None]
    return out


def base_forward(model: nn.Module, ids: Tensor, **kwargs):
    """``model.base_model`` on ids [B, L] (no KV cache), with document masks when they are enabled for it."""
    eos = getattr(model, _EOS_ATTR, None)
    extra = {} if eos is None else document_inputs(ids, eos, getattr(model.config, "_attn_implementation", "sdpa"))
    return model.base_model(input_ids=ids, use_cache=False, **extra, **kwargs)
