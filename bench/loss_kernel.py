"""Chunked distillation loss vs the naive reference (full-vocabulary fp32 log_softmax + KL).

Each variant runs in its own subprocess so its peak memory is its own: on CUDA the allocator's
peak, on CPU the process's peak RSS above its level after the inputs were built.
--naive-tokens M measures the naive reference at M tokens and scales its time and peak linearly to
--tokens (both are linear in N: it holds [N, V] tensors), for an N whose naive peak does not fit.
Usage: python bench/loss_kernel.py [--tokens 8192] [--vocab 49152] [--chunk-size auto] [--memory-mb 1024]
                                   [--naive-tokens M] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time

import torch


def naive(s_hidden, s_head, t_hidden, t_head, tau, coef):
    """The reference every tool starts from: both models' full logits in fp32."""
    t_logp = (t_hidden.float() @ t_head.float().T / tau[:, None]).log_softmax(-1)  # [N, V]
    s_logp = (s_hidden.float() @ s_head.float().T / tau[:, None]).log_softmax(-1)  # [N, V]
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [N]
    return (coef * tau**2 * kl).sum()


def chunked(s_hidden, s_head, t_hidden, t_head, tau, coef, chunk_size):
    from egad_cli.losses import chunked_distill_loss, forward_kl

    return chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=forward_kl,
                                chunk_size=chunk_size)[0]


def chunk_rows(chunk_size: str, memory_mb: float, vocab: int) -> int:
    """What `egad distill loss.chunk_size=… loss.memory_mb=…` uses at this V."""
    from egad_cli.config.policies import ForwardKLConfig

    size = chunk_size if chunk_size == "auto" else int(chunk_size)
    return ForwardKLConfig(chunk_size=size, memory_mb=memory_mb).chunk_rows(vocab)


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(variant: str, tokens: int, vocab: int, ds: int, dt: int, device: str, repeats: int, rows: int) -> dict:
    torch.manual_seed(0)
    s_hidden = torch.randn(tokens, ds, device=device, requires_grad=True)
    s_head = (torch.randn(vocab, ds, device=device) * 0.05).requires_grad_()
    t_hidden, t_head = torch.randn(tokens, dt, device=device), torch.randn(vocab, dt, device=device) * 0.05
    tau = torch.rand(tokens, device=device) + 0.5
    coef = torch.rand(tokens, device=device) / tokens
    fn = naive if variant == "naive" else functools.partial(chunked, chunk_size=rows)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes(device)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        loss = fn(s_hidden, s_head, t_hidden, t_head, tau, coef)
        loss.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        s_hidden.grad = s_head.grad = None
    best = min(times[1:])
    return {"variant": variant, "loss": float(loss), "seconds": best, "tokens_per_s": tokens / best,
            "peak_mib": (peak_bytes(device) - (0 if device.startswith("cuda") else base)) / 2**20}


def main() -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--student-dim", type=int, default=128)
    ap.add_argument("--teacher-dim", type=int, default=576)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-size", default="auto", help="auto (from --memory-mb and V, as egad distill) or a number")
    ap.add_argument("--memory-mb", type=float, default=1024, help="loss.memory_mb for --chunk-size auto")
    ap.add_argument("--naive-tokens", type=int, default=None,
                    help="measure naive at this N and scale it linearly to --tokens")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    args = ap.parse_args()
    rows_per_chunk = chunk_rows(args.chunk_size, args.memory_mb, args.vocab)
    if args.variant:
        tokens = args.naive_tokens if args.variant == "naive" and args.naive_tokens else args.tokens
        print(json.dumps(run_one(args.variant, tokens, args.vocab, args.student_dim, args.teacher_dim,
                                 args.device, args.repeats, rows_per_chunk)))
        return []
    rows = []
    for variant in ("naive", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, *sys.argv[1:]], check=True,
                             capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[0]
    note = ""
    if args.naive_tokens and args.naive_tokens != args.tokens:  # linear in N: time and the [N, V] tensors
        scale = args.tokens / args.naive_tokens
        ref["peak_mib"] *= scale
        ref["seconds"] *= scale
        ref["loss"] = float("nan")
        note = f" (naive measured at N={args.naive_tokens}, scaled x{scale:g})"
        ref["variant"] = "naive*"
    print(f"loss kernel: N={args.tokens} tokens, V={args.vocab}, Ds={args.student_dim}, Dt={args.teacher_dim}, "
          f"device={args.device}, chunk={rows_per_chunk} tokens, forward+backward, best of {args.repeats}{note}")
    print(f"{'variant':<10}{'tokens/s':>12}{'peak MiB':>12}{'speed ×ref':>12}{'memory ×ref':>13}")
    for r in rows:
        print(f"{r['variant']:<10}{r['tokens_per_s']:>12.0f}{r['peak_mib']:>12.1f}"
              f"{r['tokens_per_s'] / ref['tokens_per_s']:>12.2f}{r['peak_mib'] / max(ref['peak_mib'], 1e-9):>13.2f}")
    if note:
        print("same loss: not checked (naive ran at another N)")
    else:
        print(f"same loss: |chunked - naive| = {abs(rows[1]['loss'] - ref['loss']):.2e}")
    return rows


if __name__ == "__main__":
    main()
