"""Keep freed host memory in the process for the next step, instead of handing it back to the OS (glibc).

A training step on a CPU allocates and frees the same few vocabulary-sized blocks every time (the chunked loss's
[C, V] fp32 logits, log-probabilities and gradient: 100 MB each at 508 x 49,152). glibc's malloc serves a block
above its mmap threshold (128 KiB, raised dynamically to at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so each step faults every page of every such block in again: on a 2-core AMD EPYC a bf16 egad step took
146,312 minor page faults and 0.987 s; with the thresholds below, 0 faults and 0.747 s (bench/precision_speed.py,
docs/performance.md).

Raising ``M_MMAP_THRESHOLD`` (blocks up to it come from the heap, where freed ones are reused) and
``M_TRIM_THRESHOLD`` (how much free memory the heap's top may keep before it is returned) fixes that without a
different allocator. The cost: the process keeps up to its peak (the freed blocks stay mapped for reuse), so its
resident memory does not fall after the peak; its peak grew by 6 % in that bench (fragmentation).
``EGAD_KEEP_FREED_MEMORY=0`` leaves glibc's defaults. Other C libraries (macOS, musl) are left alone."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

from egad_cli.errors import UserError

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks up to 1 GiB come from the heap; up to 2 GiB of free heap top is kept (glibc's own rule: trim = 2 x mmap)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2 << 30
OVERRIDE = "EGAD_KEEP_FREED_MEMORY"

_applied: str | None = None  # what the first call did; malloc's settings are per process


def keep_freed_host_memory(env: Mapping[str, str] = os.environ, libc=None) -> str:
    """Set glibc's thresholds once per process (later calls return the first answer); returns what was done, for
    summary.json. ``libc``: an object with ``mallopt(param, value) -> int`` (the tests pass their own, and then
    nothing is cached)."""
    global _applied
    if libc is None and _applied is not None:
        return _applied
    answer = _apply(env, libc)
    if libc is None:
        _applied = answer
    return answer


def override_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """What is wrong with EGAD_KEEP_FREED_MEMORY, or None (config.validate lists it with the config's problems,
    before any model loads)."""
    asked = env.get(OVERRIDE, "").strip()
    if asked in ("", "0", "1"):
        return None
    return (f"{OVERRIDE}={asked!r}: use 0 (leave the C library's defaults) or 1 / unset (keep freed blocks for the "
            f"next step)")


def _apply(env: Mapping[str, str], libc) -> str:
    problem = override_problem(env)
    if problem:
        raise UserError(problem)
    if env.get(OVERRIDE, "").strip() == "0":
        return f"C library defaults ({OVERRIDE}=0)"
    if libc is None:
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return "C library defaults (not glibc)"
        try:
            libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every Linux it runs on: no library search
        except OSError:
            return "C library defaults (libc not loadable)"
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        return "C library defaults (glibc refused mallopt)"
    return "freed blocks kept (glibc M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB)"
