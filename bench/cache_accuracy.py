"""How close a teacher cache (top-k + tail bucket, as `egad cache` stores it) is to the live teacher.

Real SmolLM2 teacher logits over the embedded corpus, a student (the random `tiny` one, or
--student DIR, e.g. a distilled student/), per divergence, τ ∈ {0.5, 1, 2} and k ∈ {16, 48 (the
default), 64, 256}: relative error of the loss Σ τ² D / n against the live full-vocabulary loss, and
the cosine between their gradients w.r.t. the student logits. The cached log-probs and tail sums are
rounded to fp16 as the cache stores them (--fp32: cache dtype=float32). Also the bytes per token of
the cache's format (without dual-branch states).

Usage: python bench/cache_accuracy.py [--blocks 4] [--student DIR] [--fp32]
"""

from __future__ import annotations

import argparse

import torch
from hydra import compose, initialize_config_dir

from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.config.policies import LOSSES
from egad_cli.data import build_splits
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.losses.cached import DEFAULT_EXPONENTS, cached_divergence, topk_from_logits
from egad_cli.models import load_models

KS = (16, 48, 64, 256)
TAUS = (0.5, 1.0, 2.0)


def bytes_per_token(k: int, vocab: int, n_exponents: int, n_entropies: int = 2, value_bytes: int = 2) -> int:
    """The cache's format per predicting token: top-k log-probs and the tail power sums in the cache
    dtype (fp16: 2 bytes), ids (uint16 when V ≤ 65,536, else int32), the exact entropies in fp32 (T = 1
    and EA-KD's T′ = 2 by default), and the block's token id (int32) and loss mask (1 byte)."""
    id_bytes = 2 if vocab <= 65_536 else 4
    return k * (value_bytes + id_bytes) + value_bytes * n_exponents + 4 * n_entropies + 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--student", default=None, help="a transformers student dir (default: the random tiny student)")
    ap.add_argument("--fp32", action="store_true", help="keep the cached values in fp32 (cache dtype=float32)")
    args = ap.parse_args()
    register_schemas()
    overrides = ["run_dir=/tmp/egad-bench"]
    if args.student:
        overrides += ["student=hf", f"student.path={args.student}"]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("distill", overrides=overrides))
    runtime = resolve_runtime(cfg.trainer)
    teacher, student, tok, vocab = load_models(cfg, runtime)
    data = build_splits(cfg.dataset, tok, cache_dir(cfg.cache_dir)).train
    ids = data.ids[: args.blocks].to(runtime.device)
    valid = data.mask[: args.blocks, 1:].reshape(-1)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits[:, :-1, :vocab].reshape(-1, vocab).float()[valid]
        s_base = student(input_ids=ids).logits[:, :-1, :vocab].reshape(-1, vocab).float()[valid]
    n = t_logits.shape[0]
    print(f"cache accuracy: SmolLM2 teacher, {'student ' + args.student if args.student else 'random tiny student'}, "
          f"{n} tokens, V = {vocab}, tail exponents {DEFAULT_EXPONENTS}, cached log-probs in "
          f"{'fp32' if args.fp32 else 'fp16'}")
    value_bytes = 4 if args.fp32 else 2
    print("bytes/token: " + ", ".join(f"k={k}: {bytes_per_token(k, vocab, len(DEFAULT_EXPONENTS), value_bytes=value_bytes)}"
                                      for k in KS))
    print(f"{'divergence':<11} {'tau':>4} " + " ".join(f"{'k=' + str(k) + ' rel.err':>13} {'cos':>9}" for k in KS))
    tops = {}
    for k in KS:
        top = topk_from_logits(t_logits, k)
        if not args.fp32:
            top.logp, top.log_tail = top.logp.half().float(), top.log_tail.half().float()
        tops[k] = top
    for name in LOSSES.names():
        fn = LOSSES[name]().divergence()
        for tau_value in TAUS:
            tau = torch.full((n,), tau_value)
            s = s_base.clone().requires_grad_(True)
            live = (tau**2 * fn(torch.log_softmax(t_logits / tau_value, -1), torch.log_softmax(s / tau_value, -1))).mean()
            (g_live,) = torch.autograd.grad(live, s)
            cells = []
            for k in KS:
                s = s_base.clone().requires_grad_(True)
                cached = (tau**2 * cached_divergence(tops[k], s, tau, fn)).mean()
                (g,) = torch.autograd.grad(cached, s)
                cos = torch.nn.functional.cosine_similarity(g.flatten(), g_live.flatten(), dim=0).item()
                err = abs(cached.item() - live.item()) / max(abs(live.item()), 1e-12)
                cells.append(f"{err:>13.2e} {cos:>9.5f}")
            print(f"{name:<11} {tau_value:>4g} " + " ".join(cells))



if __name__ == "__main__":
    main()
