"""Cross-tokenizer distillation on the embedded defaults: does the teacher help a student with its own vocabulary?

    python bench/cross_tokenizer.py [--out multirun/cross] [--seeds 0 1 2] [--vocab 8192] [extra distill overrides…]

The student is `student=tiny` with its own byte-level BPE (`student.tokenizer=train`, --vocab tokens, trained on the
training split); the teacher is the embedded SmolLM2 with its 49,152-token vocabulary. At the default budget, for
each seed:

* `method=ce`: the student trained on its own tokens with cross-entropy alone, the baseline a user without
  cross-tokenizer distillation has;
* `method=kd` and `method=egad` across the tokenizers (mapped divergence + ULD on the aligned positions);
* on the first seed only: `method=kd cross.uld_weight=0` (what the ULD term adds) and the same-tokenizer `method=kd`
  with the student on the teacher's tokenizer (the step-time reference; its bits per byte are shown for context).

Then `egad eval` on each run (held-out bits per byte of student and teacher, KL at the aligned positions, top-1
agreement on mapped tokens), and one Markdown table: mean ± sd over seeds, and each method minus ce per seed
(paired by seed) with a t interval. Mean step time after the first step (trainer.log_every=1). Runs already in
--out are reused, so an interrupted bench continues.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from egad_cli.stats import paired_difference


def egad(*argv: str) -> None:
    exe = Path(sys.executable).with_name("egad")
    print("$ egad " + " ".join(argv), flush=True)
    subprocess.run([str(exe), *argv], check=True)


def step_time(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time_step_s"] for r in rows if "time_step_s" in r][1:]  # the first step pays one-off costs
    return statistics.mean(times)


def one(out: Path, name: str, overrides: list[str], extra: list[str]) -> dict:
    run = out / name
    if not (run / "summary.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        egad("distill", *overrides, "trainer.log_every=1", "trainer.ckpt_every=0", f"hydra.run.dir={run}", *extra)
    if not (run / "eval.json").is_file():
        egad("eval", f"run_dir={run}", "eval.max_new_tokens=0", f"hydra.run.dir={run}/eval-output")
    ev = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return {"bpb": ev["bits_per_byte_student"], "bpb_teacher": ev["bits_per_byte_teacher"],
            "kl": ev.get("kl_forward", math.nan), "top1": ev.get("top1_agreement", math.nan),
            "aligned": ev.get("aligned_share", math.nan), "step_s": step_time(run),
            "aligned_train": summary.get("cross_tokenizer", {}).get("aligned_share_train", math.nan),
            "train_s": summary["train_seconds"]}


def mean_sd(xs: list[float]) -> str:
    if any(math.isnan(x) for x in xs):
        return "—"  # (a same-tokenizer run has no aligned share)
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="multirun/cross")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--vocab", type=int, default=8192)
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    cross = ["student=tiny", "student.tokenizer=train", f"student.tokenizer_vocab_size={args.vocab}"]
    arms = {"ce": ["method=ce"], "kd": ["method=kd"], "egad": ["method=egad"]}
    results: dict[str, dict[int, dict]] = {name: {} for name in arms}  # arm -> seed -> run's figures
    for seed in args.seeds:
        for name, overrides in arms.items():
            results[name][seed] = one(out, f"{name}-s{seed}", [*cross, *overrides, f"trainer.seed={seed}"], extra)
    s0 = args.seeds[0]
    results["kd, uld_weight=0"] = {s0: one(out, f"kd-nould-s{s0}", [*cross, "method=kd", "cross.uld_weight=0",
                                                                     f"trainer.seed={s0}"], extra)}
    results["kd, same tokenizer"] = {s0: one(out, f"kd-same-s{s0}", ["student=tiny", "method=kd",
                                                                       f"trainer.seed={s0}"], extra)}
    ce_bpb = {seed: r["bpb"] for seed, r in results["ce"].items()}

    print(f"\nstudent=tiny, its own {args.vocab}-token BPE; seeds {args.seeds}; teacher bits per byte "
          f"{results['kd'][s0]['bpb_teacher']:.4f}; aligned share of the student's training tokens "
          f"{results['kd'][s0]['aligned_train']:.3f}\n")
    print("| run | seeds | student bits/byte | − ce (paired, 95 % t) | aligned KL(p‖q) | top-1 agree (mapped) | "
          "aligned share (held-out) | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for name, by_seed in results.items():
        rows = list(by_seed.values())
        bpb = [r["bpb"] for r in rows]
        vs = "" if name == "ce" else paired_difference({s: r["bpb"] for s, r in by_seed.items()}, ce_bpb).text()
        print(f"| {name} | {len(rows)} | {mean_sd(bpb)} | {vs} | {mean_sd([r['kl'] for r in rows])} | "
              f"{mean_sd([r['top1'] for r in rows])} | {mean_sd([r['aligned'] for r in rows])} | "
              f"{mean_sd([r['step_s'] for r in rows])} |")


if __name__ == "__main__":
    main()
