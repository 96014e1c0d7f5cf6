"""Does bf16 change what a student learns? The demo's budget in fp32 and in bf16, seeds paired. Resumable.

    python bench/precision_quality.py [--out precision-quality] [--seeds 0,1,2] [--methods egad] [distill overrides…]

Per method and seed: ``egad distill`` (the demo: the embedded defaults, 150 steps) with trainer.precision=fp32 and
with trainer.precision=bf16, each its own dir; then ``egad eval`` of every run **in fp32** (precision=fp32, no
generations, no on-policy metric), so that both students are measured with the same stick. Reported per method:
the held-out KL of each precision (mean over seeds), bf16 − fp32 paired by seed with its 95 % t interval
(egad_cli.stats.paired_difference), the run's own end-of-run KL (computed in the run's precision: how far the
in-run number moves), and the median step time of each. Writes OUT/precision_quality.md and .json. Running it
again skips what is done (a run with summary.json, an eval with eval.json).

bf16 is emulated (slow) on a CPU without native bf16 matmuls: bench/precision_speed.py says which this is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from cache_vs_live import median_step, read
from study import egad, point_dir

from egad_cli.stats import paired_difference

EVAL_ARGS = ["precision=fp32", "eval.max_new_tokens=0", "eval.onpolicy_prompts=0"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("precision-quality"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="egad")
    ap.add_argument("overrides", nargs="*", help="distill overrides for every run")
    args = ap.parse_args()
    out = args.out.resolve()
    seeds, methods = args.seeds.split(","), args.methods.split(",")
    for method in methods:
        for seed in seeds:
            for precision in ("fp32", "bf16"):
                point = [f"method={method}", f"trainer.seed={seed}", f"trainer.precision={precision}"]
                run = point_dir(out / "runs", point)
                log = out / "logs" / f"{run.name}.log"
                if not (run / "summary.json").is_file():
                    shutil.rmtree(run, ignore_errors=True)  # cut off: start again
                    if egad(["distill", *point, *args.overrides, f"hydra.run.dir={run}"], log, out) != 0:
                        raise SystemExit(f"distill failed: {log}")
                evaluated = (run / "eval.json").is_file() or egad(["eval", f"run_dir={run}", *EVAL_ARGS], log, out) == 0
                if not evaluated:
                    raise SystemExit(f"eval failed: {log}")
    table(out, methods, seeds)


def table(out: Path, methods: list[str], seeds: list[str]) -> None:
    lines = [("| method | fp32 KL | bf16 KL | bf16 − fp32 (paired, 95 % CI) | in-run KL fp32 / bf16 "
              "| s/step fp32 / bf16 | speed-up |"), "|---|---:|---:|---|---:|---:|---:|"]
    result = {}
    for method in methods:
        kl, own, step = {}, {}, {}
        for precision in ("fp32", "bf16"):
            runs = {s: point_dir(out / "runs", [f"method={method}", f"trainer.seed={s}", f"trainer.precision={precision}"])
                    for s in seeds}
            kl[precision] = {s: read(r / "eval.json")["kl_forward"] for s, r in runs.items() if read(r / "eval.json")}
            own[precision] = {s: read(r / "summary.json")["kl_after"] for s, r in runs.items()
                              if read(r / "summary.json")}
            step[precision] = statistics.median(t for r in runs.values() if (t := median_step(r)) is not None)
        d = paired_difference(kl["bf16"], kl["fp32"])
        ci = "n/a" if d is None or d.low is None else f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
        mean = {p: statistics.mean(kl[p].values()) for p in kl}
        lines.append(f"| {method} | {mean['fp32']:.4f} | {mean['bf16']:.4f} | {ci} | "
                     f"{statistics.mean(own['fp32'].values()):.4f} / {statistics.mean(own['bf16'].values()):.4f} | "
                     f"{step['fp32']:.3f} / {step['bf16']:.3f} | {step['fp32'] / step['bf16']:.2f}x |")
        result[method] = {"kl": kl, "kl_in_run": own, "median_step_s": step,
                          "diff": None if d is None else d.__dict__}
    text = "\n".join(lines)
    print(text)
    (out / "precision_quality.md").write_text(text + "\n")
    (out / "precision_quality.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
