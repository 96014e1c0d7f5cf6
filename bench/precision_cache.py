"""A teacher cache built in bf16 against one built in fp32: the stored values' error, and a kd student from each.

    python bench/precision_cache.py [--out precision-cache] [--seeds 0] [egad cache overrides…]
    e.g. dataset.max_train_tokens=76800 dataset.max_val_tokens=8192: one epoch of the demo's budget, as make compare

1. ``egad cache precision=fp32`` and ``egad cache precision=bf16`` (the default exact kind) over the data;
   the teacher's forward runs in that precision, the statistics come from an fp32 head in both.
2. The stored values compared on the held-out split (every token): the entropy at T = 1 (max |Δ|), and the
   teacher's distribution from the stored final states through the head in fp32 — max |Δ log p| on the fp32
   cache's top-4 ids, and KL(fp32-built ‖ bf16-built) per token (mean, max).
3. ``egad distill method=kd`` from each cache (each seed), then ``egad eval precision=fp32`` with the live fp32
   teacher: the held-out KL of the two students, paired by seed.
Writes OUT/precision_cache.md. Resumable: a cache with a manifest, a run with summary.json and an eval with
eval.json are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from study import egad

from egad_cli.teacher_cache.use import open_cached_teacher

EVAL_ARGS = ["precision=fp32", "eval.max_new_tokens=0", "eval.onpolicy_prompts=0"]


CHUNK = 512  #: tokens compared at a time: [CHUNK, V] fp32 per tensor, never [all held-out tokens, V]


def stored_states(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the stored final states [N, D] fp32, the stored entropy at T = 1 [N], the head [V, D] fp32) over the
    held-out split's valid tokens of an exact cache."""
    cached = open_cached_teacher(str(root))
    val = cached.val
    if val is None or not val.exact:
        raise SystemExit(f"precision_cache: {root} is not an exact cache with a val split (kind=exact, the default)")
    rows = val.rows(torch.arange(val.n_blocks), torch.device("cpu"))
    valid = val.packed().mask[:, 1:].reshape(-1)
    return rows["hidden"][valid], rows["entropy"][1.0][valid], val.head.float()


def compare(ref_root: Path, got_root: Path) -> dict[str, float]:
    """Entropy, top-4 log p and KL differences between two exact caches of the same data, CHUNK tokens at a time."""
    h_ref, e_ref, w_ref = stored_states(ref_root)
    h_got, e_got, w_got = stored_states(got_root)
    d_e = (e_got - e_ref).abs()
    out = {"tokens": h_ref.shape[0], "entropy_max": float(d_e.max()), "entropy_mean": float(d_e.mean()),
           "entropy_ref_mean": float(e_ref.mean()), "logp_max": 0.0, "logp_sum": 0.0, "kl_max": 0.0, "kl_sum": 0.0}
    for start in range(0, h_ref.shape[0], CHUNK):
        ref = torch.log_softmax(h_ref[start:start + CHUNK] @ w_ref.T, dim=-1)  # [C, V]
        got = torch.log_softmax(h_got[start:start + CHUNK] @ w_got.T, dim=-1)  # [C, V]
        top = ref.topk(4, dim=-1).indices  # [C, 4]
        d_logp = (got.gather(1, top) - ref.gather(1, top)).abs()
        kl = (ref.exp() * (ref - got)).sum(-1)  # [C]
        out["logp_max"] = max(out["logp_max"], float(d_logp.max()))
        out["logp_sum"] += float(d_logp.mean(-1).sum())
        out["kl_max"] = max(out["kl_max"], float(kl.max()))
        out["kl_sum"] += float(kl.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("precision-cache"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("overrides", nargs="*", help="egad cache overrides (the data: the runs read the cache's)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds.split(",")
    caches, kl = {}, {}
    for precision in ("fp32", "bf16"):
        cache = caches[precision] = out / f"cache-{precision}"
        log = out / "logs" / f"cache-{precision}.log"
        if not (cache / "manifest.json").is_file() and egad(
                ["cache", f"precision={precision}", *args.overrides, f"out_dir={cache}",
                 f"hydra.run.dir={cache}-log"], log, out) != 0:
            raise SystemExit(f"cache failed: {log}")
        for seed in seeds:
            run = out / f"kd-{precision}-seed{seed}"
            log = out / "logs" / f"{run.name}.log"
            if not (run / "summary.json").is_file():
                shutil.rmtree(run, ignore_errors=True)
                if egad(["distill", "method=kd", f"trainer.seed={seed}", "trainer.precision=fp32",
                         f"teacher_cache={cache}", f"hydra.run.dir={run}"], log, out) != 0:
                    raise SystemExit(f"distill failed: {log}")
            if not (run / "eval.json").is_file() and egad(["eval", f"run_dir={run}", *EVAL_ARGS], log, out) != 0:
                raise SystemExit(f"eval failed: {log}")
            kl.setdefault(precision, {})[seed] = json.loads((run / "eval.json").read_text())["kl_forward"]
    c = compare(caches["fp32"], caches["bf16"])
    n = c["tokens"]
    diffs = [kl["bf16"][s] - kl["fp32"][s] for s in seeds]
    lines = [
        (f"# A teacher cache built in bf16 against fp32 ({n} held-out tokens; {torch.__version__}, "
        f"ATen {torch.backends.cpu.get_cpu_capability()})"),
        "",
        (f"- entropy at T = 1: max |Δ| {c['entropy_max']:.4g} nats "
        f"(mean |Δ| {c['entropy_mean']:.3g}; mean entropy {c['entropy_ref_mean']:.3f})"),
        (f"- log-probabilities of the fp32 cache's top-4 ids: max |Δ| {c['logp_max']:.4g}, "
        f"mean |Δ| {c['logp_sum'] / n:.3g}"),
        f"- KL(fp32-built ‖ bf16-built) per token: mean {c['kl_sum'] / n:.3g}, max {c['kl_max']:.3g} nats",
        (f"- kd student from each, held-out KL in fp32 with the live teacher: fp32-built "
        f"{statistics.mean(kl['fp32'].values()):.5f}, bf16-built {statistics.mean(kl['bf16'].values()):.5f}; "
        f"bf16 − fp32 per seed {', '.join(f'{d:+.5f}' for d in diffs)}"),
    ]
    text = "\n".join(lines)
    print(text)
    (out / "precision_cache.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
