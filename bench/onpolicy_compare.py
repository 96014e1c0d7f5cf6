"""Off-policy kd vs on-policy distillation on the embedded defaults, at equal student-update budget.

    python bench/onpolicy_compare.py [--out multirun/onpolicy] [--steps 200] [extra distill overrides…]

Runs `egad distill` for kd (off-policy), gkd (λ = 0.5), onpolicy (reverse KL, λ = 1) and egad with λ = 1, each
for the same number of optimizer steps of the same batch (trainer.log_every=1, so every step's timing is
logged), then `egad eval` on each run (held-out off-policy metrics and the on-policy metric: the student
continues 32 held-out prompts and the teacher grades its tokens), and prints one Markdown table: held-out
KL(teacher ‖ student) on the data, on-policy reverse KL and teacher NLL on the student's samples, and the
mean step time split into sampling, teacher (the rest of the no-grad plan) and student (forward, backward,
optimizer). ~55 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

RUNS = {"kd": ["method=kd"], "gkd": ["method=gkd"], "onpolicy": ["method=onpolicy"],
        "egad λ=1": ["method=egad", "onpolicy.lmbda=1"]}


def egad(*argv: str) -> None:
    exe = Path(sys.executable).with_name("egad")
    print("$ egad " + " ".join(argv), flush=True)
    subprocess.run([str(exe), *argv], check=True)


def step_split(run: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = rows[1:]  # the first step pays one-off costs (allocator warm-up)
    gen = statistics.mean(r.get("time_gen_s", 0.0) for r in rows)
    plan = statistics.mean(r["time_plan_s"] for r in rows)
    step = statistics.mean(r["time_step_s"] for r in rows)
    return {"gen": gen, "teacher": plan - gen, "student": step - plan, "step": step,
            "gen_len": statistics.mean(r.get("gen_len", 0.0) for r in rows),
            "onpolicy_frac": statistics.mean(r.get("onpolicy_frac", 0.0) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="multirun/onpolicy")
    ap.add_argument("--steps", type=int, default=200)
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    rows = []
    for name, overrides in RUNS.items():
        run = out / name.split()[0] if name != "egad λ=1" else out / "egad_lmbda1"
        if not (run / "summary.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            egad("distill", *overrides, f"trainer.max_steps={args.steps}", "trainer.log_every=1",
                 f"hydra.run.dir={run}", *extra)
        if not (run / "eval.json").is_file():
            egad("eval", f"run_dir={run}", "eval.max_new_tokens=0", f"hydra.run.dir={run}/eval-output")
        summary = json.loads((run / "summary.json").read_text())
        ev = json.loads((run / "eval.json").read_text())
        rows.append((name, summary, ev, step_split(run)))
    print("\n| method | λ | held-out KL (data) | on-policy KL(q‖p) | on-policy teacher NLL | sampled share of "
          "tokens | s/step: sampling | teacher | student | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, summary, ev, t in rows:
        lmbda = {"kd": 0, "gkd": 0.5}.get(name, 1)
        print(f"| {name} | {lmbda} | {summary['kl_after']:.3f} | {ev['onpolicy_kl_reverse']:.3f} | "
              f"{ev['onpolicy_nll_teacher']:.3f} | {t['onpolicy_frac']:.2f} | {t['gen']:.3f} | {t['teacher']:.3f} | "
              f"{t['student']:.3f} | {t['step']:.3f} |")
    kl_before = rows[0][1]["kl_before"]
    print(f"\nheld-out KL before training: {kl_before:.3f}; on-policy metric over {rows[0][2]['onpolicy_prompts']} "
          f"prompts; mean sampled length (λ > 0): " +
          ", ".join(f"{n} {t['gen_len']:.1f}" for n, _, _, t in rows if t["gen_len"] > 0))


if __name__ == "__main__":
    main()
