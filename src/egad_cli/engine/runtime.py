"""Device, precision, seeding and the (optional) torchrun process group."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from egad_cli.config.schema import TrainerConfig
from egad_cli.errors import UserError


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  #: bf16 on CUDA (autocast), None = plain fp32
    teacher_dtype: torch.dtype  #: the teacher runs in the training dtype
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Global sums over ranks, for loss denominators (a no-op on one process)."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


    def reduce_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Step metrics over all ranks: loss terms are partial sums (global denominators), so they
        add up; per-token means (tau_mean, …) are averaged."""
        if self.world_size == 1:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {k: float(v) if k.startswith("loss") else float(v) / self.world_size for k, v in zip(keys, values)}


def resolve_runtime(cfg: TrainerConfig, device_key: str = "trainer.device") -> Runtime:
    """Pick device and precision from trainer.device / trainer.precision; fail early on impossible asks."""
    rank, world = 0, 1
    if cfg.strategy == "ddp":
        if "WORLD_SIZE" not in os.environ:
            raise UserError("trainer.strategy=ddp needs torchrun: "
                            "torchrun --nproc-per-node N -m egad_cli distill trainer.strategy=ddp …")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if cfg.device == "auto":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
            else torch.device("cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"{device_key}={cfg.device}: no CUDA device is available here; use {device_key}=cpu "
                            f"or {device_key}=auto")
    if cfg.strategy == "ddp" and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return Runtime(device, torch.bfloat16, torch.bfloat16, rank, world)
    return Runtime(device, None, torch.float32, rank, world)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
