"""Where on-policy sequences start: the prompt the student continues.

Prompt/response data (``dataset=jsonl``) has its records' prompts; plain text has none, so the first
tokens of a training block stand in for one. Either way a prompt is a pure function of the sequence's
index in the run, so a resumed run picks the prompts an uninterrupted one would.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from egad_cli.data.packing import Packed


class PromptSource(Protocol):
    def prompt(self, sequence: int, block: Tensor) -> Tensor: ...  # [P] token ids for run sequence j (block: [L])

    def describe(self) -> str: ...


class BlockPrefix:
    """Plain text: the first ``length`` tokens of the sequence's own block."""

    def __init__(self, length: int):
        self.length = length

    def prompt(self, sequence: int, block: Tensor) -> Tensor:
        return block[: self.length]

    def describe(self) -> str:
        return f"the first {self.length} tokens of each block"


class PromptPool:
    """Prompt/response data: the records' prompts (each keeps its last ``length`` tokens), every one once per
    pass over the pool, in a seeded order: sequence j takes prompt perm_e[j mod n], e = j // n."""

    def __init__(self, prompts: list[Tensor], length: int, seed: int):
        if not prompts:
            raise ValueError("an empty prompt pool")
        self.prompts = [p[-length:] for p in prompts]
        self.truncated = sum(len(p) > length for p in prompts)
        self.length, self.seed = length, seed
        self._perm: tuple[int, Tensor] | None = None

    def prompt(self, sequence: int, block: Tensor) -> Tensor:
        epoch, i = divmod(sequence, len(self.prompts))
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.prompts), generator=gen))
        return self.prompts[int(self._perm[1][i])]

    def describe(self) -> str:
        cut = f", {self.truncated} cut to their last {self.length} tokens" if self.truncated else ""
        return f"{len(self.prompts)} prompts of the data{cut}"


def prompt_spans(data: Packed) -> list[Tensor]:
    """The complete prompts in packed prompt/response data: maximal runs of non-loss tokens that open the
    packed stream or follow a loss token (the previous record's EOS), and end where a loss token (the
    response) begins. Blocks are consecutive cuts of one stream, so a prompt may straddle two blocks; a
    run cut off by the end of the stream is left out. Plain text (every token a loss token) has none."""
    ids, mask = data.ids.reshape(-1), data.mask.reshape(-1)  # [T]
    if mask.all() or mask.numel() == 0:
        return []
    free = ~mask
    after_loss = torch.cat([torch.ones(1, dtype=torch.bool), mask[:-1]])  # the stream's start counts as one
    before_loss = torch.cat([mask[1:], torch.zeros(1, dtype=torch.bool)])
    starts = (free & after_loss).nonzero().squeeze(1)  # [R]
    ends = (free & before_loss).nonzero().squeeze(1)  # [R'] (inclusive), R' ≤ R
    first = starts[torch.searchsorted(starts, ends, right=True) - 1]  # the start of each ending run
    return [ids[int(s): int(e) + 1].clone() for s, e in zip(first, ends)]


def prompt_source(data: Packed, length: int, seed: int) -> PromptSource:
    """The records' prompts when the data has them, else block prefixes of ``length`` tokens."""
    spans = prompt_spans(data)
    return PromptPool(spans, length, seed) if spans else BlockPrefix(length)
