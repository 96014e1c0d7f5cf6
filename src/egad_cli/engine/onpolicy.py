"""On-policy sequences: the student continues a prompt, and the block it writes replaces a data block.

A sampled sequence is laid out like a data block of the same length L — prompt, sampled tokens, then
padding — so the teacher pass, the policies and the chunked loss run on it unchanged. Its loss mask
covers the sampled tokens only (EOS included: ending is a choice the teacher grades); the prompt and the
padding carry no loss. Padding follows the sequence, so under causal attention it changes nothing before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from egad_cli.config.schema import OnPolicyConfig
from egad_cli.data.packing import Packed
from egad_cli.data.prompts import PromptSource, prompt_source
from egad_cli.models.sampling import HFSampler, Sampler


def onpolicy_rows(sequences: Tensor, lmbda: float) -> Tensor:
    """Which run sequences (indices j, [B]) the student continues: ⌊(j + 1)λ⌋ > ⌊jλ⌋, a share λ spread evenly."""
    j = sequences.to(torch.float64)
    return torch.floor((j + 1) * lmbda) > torch.floor(j * lmbda)  # [B] bool


def sampled_blocks(prompts: list[Tensor], continuations: list[Tensor], length: int, pad_id: int
                   ) -> tuple[Tensor, Tensor]:
    """Blocks [n, length] of prompt + continuation + padding, and their loss masks [n, length] (continuation only)."""
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.bool)
    for row, (prompt, new) in enumerate(zip(prompts, continuations)):
        end = len(prompt) + len(new)
        ids[row, : len(prompt)], ids[row, len(prompt): end] = prompt, new
        mask[row, len(prompt): end] = True
    return ids, mask


def sampling_seed(seed: int, sequence: int) -> int:
    """The sampling seed of a micro-batch: its first run sequence's index under the run's seed (distinct
    per micro-batch and rank, the same after a resume)."""
    return (seed * 1_000_003 + sequence) % 2**63


@dataclass
class RolloutLog:
    sequences: int = 0  #: sampled sequences
    new_tokens: int = 0  #: tokens they hold (EOS included)
    seconds: float = 0.0  #: time in the sampler


class Rollout:
    """Replaces a share λ of a micro-batch's sequences by the student's continuations of their prompts."""

    def __init__(self, cfg: OnPolicyConfig, sampler: Sampler, prompts: PromptSource, block_size: int, pad_id: int,
                 seed: int):
        self.lmbda, self.sampler, self.prompts = cfg.lmbda, sampler, prompts
        self.block_size, self.pad_id, self.seed = block_size, pad_id, seed
        self.max_new_tokens = cfg.new_tokens(block_size)

    def __call__(self, mb: dict) -> tuple[dict, Tensor, RolloutLog]:
        """(the micro-batch with its on-policy rows rewritten, those rows [B] bool, what sampling took).
        Without on-policy rows the micro-batch is returned as it is."""
        on = onpolicy_rows(mb["seq"], self.lmbda)  # [B]
        if not bool(on.any()):
            return mb, on, RolloutLog()
        rows = on.nonzero().squeeze(1).tolist()
        ids, mask = mb["ids"], mb["mask"]
        prompts = [self.prompts.prompt(int(mb["seq"][r]), ids[r].cpu()) for r in rows]
        start = time.perf_counter()
        new = self.sampler.sample(prompts, self.max_new_tokens, sampling_seed(self.seed, int(mb["seq"][0])))
        seconds = time.perf_counter() - start
        sampled_ids, sampled_mask = sampled_blocks(prompts, new, ids.shape[1], self.pad_id)
        ids, mask = ids.clone(), mask.clone()
        ids[rows], mask[rows] = sampled_ids.to(ids.device), sampled_mask.to(mask.device)
        return {**mb, "ids": ids, "mask": mask}, on, RolloutLog(len(rows), sum(len(n) for n in new), seconds)


def build_rollout(cfg: OnPolicyConfig, student, tokenizer, data: Packed, block_size: int, seed: int) -> Rollout:
    """The rollout of a distill run: the student's HF sampler, prompts from the training data."""
    eos = tokenizer.eos_token_id
    sampler = HFSampler(student, eos, tokenizer.pad_token_id, cfg.temperature, cfg.top_p)
    source = prompt_source(data, cfg.prompt_len(block_size), seed)
    return Rollout(cfg, sampler, source, block_size, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                   else eos, seed)
