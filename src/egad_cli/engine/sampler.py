"""Deterministic batches: micro-batch j is a pure function of (seed, j), so resuming needs no iterator state."""

from __future__ import annotations

import torch

from egad_cli.data.packing import Packed


class BlockSampler:
    """An endless stream of block indices, reshuffled each epoch from the seed; ranks take interleaved slices."""

    def __init__(self, n_blocks: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n_blocks, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen)}  # keep one epoch in memory
        return self._perms[epoch]

    def sequences(self, micro_step: int) -> torch.Tensor:
        """The run-wide indices j of the micro-batch's sequences (all ranks interleaved): [batch_size]."""
        start = (micro_step * self.world_size + self.rank) * self.batch_size
        return torch.arange(start, start + self.batch_size)

    def indices(self, micro_step: int) -> torch.Tensor:
        return torch.cat([self._perm(int(p) // self.n)[int(p) % self.n].view(1) for p in self.sequences(micro_step)])

    def batch(self, data: Packed, micro_step: int, device: torch.device) -> dict[str, torch.Tensor]:
        """ids/mask [B, L] on the device; blocks (data indices) and seq (run sequence indices j) [B] on the CPU."""
        idx = self.indices(micro_step)
        return {"ids": data.ids[idx].to(device), "mask": data.mask[idx].to(device), "blocks": idx,
                "seq": self.sequences(micro_step), **{k: v[idx].to(device) for k, v in data.extra.items()}}
