"""Device, precision, seeding and the (optional) torchrun process group."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from egad_cli.config.schema import DISTRIBUTED, TrainerConfig, launch_problem
from egad_cli.engine.host_memory import keep_freed_host_memory
from egad_cli.engine.precision import Precision, choose_precision
from egad_cli.errors import UserError

FP32 = Precision("fp32", "fp32", "as asked")


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  #: bf16 (autocast), None = plain fp32
    teacher_dtype: torch.dtype  #: the teacher runs in the training dtype
    rank: int = 0  #: global rank (all nodes)
    world_size: int = 1
    strategy: str = "single"  #: single | ddp | fsdp
    local_rank: int = 0  #: rank on this node: picks the CUDA device
    precision: Precision = FP32  #: what was chosen and why (the start line, summary.json)
    host_memory: str = "C library defaults"  #: engine.host_memory: whether freed blocks stay for the next step

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

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """[N] on every rank (the same N) -> [world · N], rank 0's first (one process: the tensor itself)."""
        if self.world_size == 1:
            return tensor
        wire = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor.contiguous()
        parts = [torch.empty_like(wire) for _ in range(self.world_size)]
        dist.all_gather(parts, wire)
        parts[self.rank] = wire  # this rank's own values, bit for bit
        out = torch.cat(parts)
        return out.bool() if tensor.dtype == torch.bool else out

    def reduce_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Step metrics over all ranks: loss terms are partial sums (global denominators), so they
        add up; per-token means (tau_mean, …) are averaged."""
        if self.world_size == 1:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return {k: float(v) if k.startswith("loss") else float(v) / self.world_size for k, v in zip(keys, values)}


def resolve_runtime(cfg: TrainerConfig, device_key: str = "trainer.device", measures: bool = False) -> Runtime:
    """Pick device and precision from trainer.device / trainer.precision; fail early on impossible asks.
    Precision (engine.precision): auto is bf16 on CUDA and on a CPU with native bf16 matmuls, fp32 elsewhere;
    ``measures`` (egad cache, eval, inspect-entropy: what they output is exact): auto is fp32 on any CPU.

    Under torchrun, RANK is the global rank (it decides who writes files) and LOCAL_RANK the rank on this
    node (it picks the GPU): on several nodes they differ."""
    rank, world, local = 0, 1, 0
    if cfg.strategy in DISTRIBUTED:
        torchrun_env_from_submitit()
    problem = launch_problem(cfg.strategy, device_key)
    if problem:
        raise UserError(problem)
    if cfg.strategy in DISTRIBUTED:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    else:
        check_device_available(cfg.device, device_key)
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local)  # `cuda` under torchrun: this process's own GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.strategy in DISTRIBUTED and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    key = device_key.replace("device", "precision")
    precision = choose_precision(cfg.precision, device, key, measures=measures)
    if precision.warning and rank == 0:
        from egad_cli.ui.console import console

        console.print(f"[yellow]warning:[/] {precision.warning}", soft_wrap=True)
    autocast = precision.dtype if precision.name == "bf16" else None  # the teacher runs in that same dtype
    # On a CPU every step re-allocates its vocabulary-sized blocks: keep them instead of re-faulting their pages
    host_memory = keep_freed_host_memory() if device.type == "cpu" else "C library defaults (CUDA device)"
    return Runtime(device, autocast, precision.dtype, rank, world, cfg.strategy, local, precision, host_memory)


def check_device_available(device: str, device_key: str = "trainer.device") -> None:
    """A CUDA device asked for by name must exist here (imports torch, nothing heavier: the light entry of
    a command calls it before the models' imports)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{device_key}={device}: no CUDA device is available here; use {device_key}=cpu "
                        f"or {device_key}=auto")


def torchrun_env_from_submitit() -> None:
    """Inside a SLURM job started by hydra-submitit-launcher (one task per GPU), set the variables torchrun
    would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from SLURM's, through submitit's own
    helper; CUDA_VISIBLE_DEVICES is left alone, so LOCAL_RANK picks the GPU as under torchrun."""
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


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
