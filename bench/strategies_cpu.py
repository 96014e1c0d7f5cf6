"""single vs ddp vs fsdp on CPU (gloo, 2 ranks under torchrun): the same global batch and the same steps,
so the loss curves must agree; the step times are reported too, but correctness is the point here: two
ranks on a few CPU cores share the cores and pay gloo's copies, and are not faster than one process.

Each strategy runs `egad distill` on random debug-sized models (teacher=random, the tiny student at
debug=smoke sizes), --steps steps of a global batch of 8 blocks of 32 tokens (single: 8 per step; ddp and
fsdp: 4 per rank). Step time: the median of each run's time_step_s after its first 2 steps.

Usage: python bench/strategies_cpu.py [--steps 40] [--method egad]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(strategy: str, steps: int, method: str, root: Path) -> list[dict]:
    run_dir = root / strategy
    per_rank = 8 if strategy == "single" else 4
    args = ["distill", "debug=smoke", f"method={method}", f"trainer.max_steps={steps}", "trainer.log_every=1",
            "trainer.ckpt_every=0", "eval.before=false", f"trainer.strategy={strategy}",
            f"trainer.batch_size={per_rank}", "trainer.threads=1", f"hydra.run.dir={run_dir}"]
    launcher = [str(BIN / "python")] if strategy == "single" else \
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port())]
    env = {**os.environ, "EGAD_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "egad_cli", *args], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--method", default="egad")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        curves = {s: run(s, args.steps, args.method, Path(tmp)) for s in ("single", "ddp", "fsdp")}
    ref = curves["single"]
    print(f"strategies on CPU: method={args.method}, {args.steps} steps × 8 blocks of 32 tokens, debug=smoke models, "
          f"2 ranks for ddp/fsdp, 1 thread per process")
    print(f"{'strategy':<10}{'s/step':>9}{'× single':>10}{'max |Δloss|/loss':>18}{'max |Δgrad_norm|/gn':>21}"
          f"{'final loss':>12}")
    base = statistics.median(r["time_step_s"] for r in ref[2:])
    for name, rows in curves.items():
        sec = statistics.median(r["time_step_s"] for r in rows[2:])
        dl = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(rows, ref))
        dg = max(abs(a["grad_norm"] - b["grad_norm"]) / abs(b["grad_norm"]) for a, b in zip(rows, ref))
        print(f"{name:<10}{sec:>9.4f}{sec / base:>10.2f}{dl:>18.1e}{dg:>21.1e}{rows[-1]['loss']:>12.5f}")


if __name__ == "__main__":
    main()
