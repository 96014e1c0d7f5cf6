"""Which precision a run computes in: ``precision=auto`` picks bf16 where the hardware runs bf16 matmuls natively.

On a CUDA device, auto is bf16 autocast (every GPU egad targets has bf16 tensor cores). On a CPU, auto is bf16
only where both the CPU and the kernels torch will call provide native bf16 matmuls:

* the CPU has AMX (``amx_bf16``: Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, Zen 4 and later); and
* nothing caps the kernels below them: ``ONEDNN_MAX_CPU_ISA`` (oneDNN runs the bf16 matmuls) at or above
  ``AVX512_CORE_BF16``, and ATen's own kernels (``ATEN_CPU_CAPABILITY``, torch.backends.cpu.get_cpu_capability)
  at AVX-512 or above.

Elsewhere bf16 is emulated: with the kernels capped at AVX2 on a 2-core Xeon with AMX, a kd step took 4.4x (the
issue's measurement) and 20x (bench/precision_speed.py, docs/performance.md) as long in bf16 as in fp32, so auto is
fp32 there, and an explicit ``bf16`` warns.
The decision reads the CPU's flags and the environment, never a timing, so the same machine always decides the
same. ``EGAD_CPU_BF16=1`` / ``=0`` overrides the detection (a container that hides CPU flags; the tests)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

#: oneDNN's ISA names from the oldest to the newest; its bf16 kernels start at AVX512_CORE_BF16
#: (https://oneapi-src.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html)
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
ONEDNN_BF16 = ONEDNN_ISAS.index("AVX512_CORE_BF16")
#: how much slower an emulated bf16 step was than fp32 (docs/performance.md: kd, 2-core Xeons with AMX, kernels
#: capped at AVX2: 4.4x in one measurement, 20x in another); the warning quotes it
EMULATED_SLOWDOWN = "4x to 20x"
OVERRIDE = "EGAD_CPU_BF16"


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU and its kernels offer for bf16 matmuls."""

    native: bool
    why: str  #: the reason, for the start line: "AMX" or "AVX512-BF16", or what is missing or capped


def cpu_bf16(env: Mapping[str, str] = os.environ, flags: tuple[bool, bool] | None = None,
             aten: str | None = None) -> CpuBf16:
    """Whether bf16 matmuls run natively on this CPU. ``flags`` (has AMX, has AVX512-BF16) and ``aten`` (ATen's
    CPU capability) default to what torch reports; the tests pass their own."""
    forced = env.get(OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return CpuBf16(forced == "1", f"{OVERRIDE}={forced}")
    amx, avx512_bf16 = flags if flags is not None else cpu_flags()
    if not (amx or avx512_bf16):
        return CpuBf16(False, "this CPU has neither AMX nor AVX512-BF16: bf16 matmuls would be emulated")
    isa = (env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()
    if isa in ONEDNN_ISAS and ONEDNN_ISAS.index(isa) < ONEDNN_BF16:
        return CpuBf16(False, f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN below its bf16 kernels (AVX512_CORE_BF16)")
    aten = aten if aten is not None else torch.backends.cpu.get_cpu_capability()
    if not aten.upper().startswith("AVX512"):
        return CpuBf16(False, f"ATen's kernels run at {aten} (ATEN_CPU_CAPABILITY), below AVX-512")
    return CpuBf16(True, "AMX" if amx else "AVX512-BF16")


def cpu_flags() -> tuple[bool, bool]:
    """(has AMX bf16 tiles, has AVX512-BF16), as torch's cpuinfo reads them."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return bool(amx), bool(avx512_bf16)


@dataclass(frozen=True)
class Precision:
    """The precision a command runs in, and why (the start line and summary.json show both)."""

    name: str  #: fp32 | bf16
    asked: str  #: auto | fp32 | bf16, as configured
    why: str
    warning: str | None = None  #: an explicit bf16 that this CPU would emulate

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def describe(self) -> str:
        return f"{self.name} ({self.asked}: {self.why})" if self.asked == "auto" else f"{self.name} ({self.why})"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "asked": self.asked, "why": self.why}


def choose_precision(asked: str, device: torch.device, key: str = "trainer.precision",
                     cpu: CpuBf16 | None = None, measures: bool = False) -> Precision:
    """fp32 or bf16 for ``asked`` (auto | fp32 | bf16) on ``device``; ``cpu``: the CPU's answer (tests).

    ``measures``: the command's output is a measurement egad calls exact (``egad cache``'s stored statistics,
    ``egad eval``'s and ``inspect-entropy``'s metrics). On a CPU, auto is fp32 for those: the teacher's forward in
    bf16 moved a cache's stored entropies by up to 0.70 nats and its distribution by 9e-4 nats/token of KL
    (bench/precision_cache.py, docs/performance.md), 2,000x the fp16 storage's own error, and such a command runs
    once, where a training run's steps repeat (and trained as well in bf16: bench/precision_quality.py)."""
    if device.type == "cuda":
        return Precision("bf16" if asked in ("auto", "bf16") else "fp32", asked,
                         "bf16 autocast on CUDA" if asked != "fp32" else "as asked")
    if asked == "fp32":
        return Precision("fp32", asked, "as asked")
    if asked == "auto" and measures:
        return Precision("fp32", asked, "exact statistics are measured in fp32 on a CPU")
    cpu = cpu if cpu is not None else cpu_bf16()
    if asked == "bf16":
        if cpu.native:
            return Precision("bf16", asked, f"as asked; native on this CPU ({cpu.why})")
        warning = (f"{key}=bf16 on a CPU without native bf16 matmuls ({cpu.why}): they are emulated, and a step "
                   f"took {EMULATED_SLOWDOWN} as long as in fp32 where this was measured (docs/performance.md); "
                   f"{key}=auto picks fp32 here")
        return Precision("bf16", asked, "as asked; emulated on this CPU", warning)
    if cpu.native:
        return Precision("bf16", asked, f"this CPU has native bf16 matmuls ({cpu.why})")
    return Precision("fp32", asked, cpu.why)
