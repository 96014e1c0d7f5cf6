"""Sampling continuations from a model, behind one small interface.

On-policy distillation (``engine.onpolicy``) and the on-policy metric of ``egad eval`` ask a ``Sampler``
for continuations of prompts. ``HFSampler`` runs transformers' ``generate`` with the model's KV cache;
a faster engine (vLLM on a GPU, say) only has to implement ``sample``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import GenerationConfig


class Sampler(Protocol):
    def sample(self, prompts: list[Tensor], max_new_tokens: int, seed: int) -> list[Tensor]:
        """For each prompt ([P_i] token ids), the sampled continuation: [n_i] ids, 1 ≤ n_i ≤ max_new_tokens,
        ending with the first EOS when one was written. Deterministic given (the weights, prompts, seed)."""
        ...


class HFSampler:
    """Ancestral sampling with ``model.generate`` (KV cache), at a temperature and top-p.

    Only these settings act: the model's own ``generation_config`` (a hub model's top_k, repetition
    penalty, …) is set aside while sampling, so every model samples from the distribution the loss sees.
    The RNG is forked and seeded per call: sampling leaves the global RNG as it found it.
    """

    def __init__(self, model: nn.Module, eos_id: int, pad_id: int | None, temperature: float = 1.0,
                 top_p: float = 1.0):
        self.model, self.eos_id = model, eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.temperature, self.top_p = temperature, top_p

    @torch.no_grad()
    def sample(self, prompts: list[Tensor], max_new_tokens: int, seed: int) -> list[Tensor]:
        model = self.model
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)  # [B, P] left-padded
        attention = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt.to(device)
            attention[row, width - len(prompt):] = 1
        settings = GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                                    num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=self.eos_id,
                                    pad_token_id=self.pad_id, use_cache=True)
        own, was_training = model.generation_config, model.training
        model.generation_config = GenerationConfig()  # its defaults must not fill in what `settings` leaves unset
        model.eval()
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = model.generate(input_ids=ids, attention_mask=attention, generation_config=settings)
        finally:
            model.generation_config = own
            model.train(was_training)
        new = out[:, width:].cpu()  # [B, ≤ max_new_tokens]; after a row's EOS: padding
        result = []
        for row in new:
            ends = (row == self.eos_id).nonzero()
            result.append(row[: int(ends[0]) + 1] if len(ends) else row)
        return result
