"""How a teacher cache stores hidden states: in its float dtype, or int8 with one scale per token.

int8 (``state_quant=int8``): per token the absolute maximum of its D values sets the scale s = max|x| / 127,
and each value is stored as q = round(x / s), an int8 in [-127, 127]. Dequantised, x̂ = q · s, so every value
is within s / 2 = max|x| / 254 of the original (round to nearest; the scale is kept in fp32). A state is
[B, L-1, D]; its scale is stored beside it as ``<name>.scale`` [B, L-1, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

INT8_LEVELS = 127
SCALE_SUFFIX = ".scale"


def quantise_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [..., D] float -> (q [..., D] int8, scale [..., 1] fp32), x ≈ q · scale (module docstring)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True) / INT8_LEVELS  # [..., 1]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stores zeros
    q = torch.round(x / safe).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return q, scale


def dequantise_int8(q: Tensor, scale: Tensor) -> Tensor:
    """(q [..., D] int8, scale [..., 1]) -> [..., D] fp32."""
    return q.float() * scale.float()


def int8_error_bound(x: Tensor) -> Tensor:
    """The largest |x - x̂| the int8 form allows for each token of x [..., D]: [..., 1] (half a step, plus the
    fp32 rounding of the product q · s)."""
    scale = x.float().abs().amax(dim=-1, keepdim=True) / INT8_LEVELS
    return scale / 2 + scale * INT8_LEVELS * torch.finfo(torch.float32).eps


def store_state(name: str, x: Tensor, quant: str, dtype: torch.dtype) -> dict[str, Tensor]:
    """The shard fields for the state `name` = x [B, L-1, D] (on the CPU)."""
    if quant == "int8":
        q, scale = quantise_int8(x)
        return {name: q.cpu(), name + SCALE_SUFFIX: scale.cpu()}
    return {name: x.to(dtype).cpu()}


def load_state(read, name: str, quant: str) -> Tensor:
    """The state `name` as fp32, read field by field with `read(field_name)` (``store_state``'s inverse)."""
    if quant == "int8":
        return dequantise_int8(read(name), read(name + SCALE_SUFFIX))
    return read(name).float()
