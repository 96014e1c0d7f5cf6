"""`make study`: which EGAD should `egad distill` run? The temperature designs against kd, one command, resumable.

    python bench/study.py [--out study] [--seeds 0,1,2,3,4] [--steps 40] [--corpora embedded,enwiki,dialogue] …

Per corpus (the embedded Python source; English Wikipedia prose from bench/prose_corpus.py; chit-chat dialogue as
prompt/response jsonl from bench/dialogue_corpus.py, where the loss counts response tokens only), in this order,
so that an interrupted study leaves whole corpora behind:
  1. one teacher cache (`egad cache`, the exact format: the teacher's final states through its head, within
     0.01-0.1 % of live on the embedded corpus and on prose, docs/teacher-cache.md), holding the training
     blocks the runs read and the held-out split;
  2. `egad distill` from that cache: --methods × --seeds at --steps optimizer steps of 4 × 128 tokens. The
     arms: kd; egad (today's: entropy temperature κ = 0.5 with τ²); egad_no_temperature; and egad with each
     new temperature design: egad_target_entropy (τ per token to the step's median entropy, no τ²),
     egad_unweighted_temperature (today's τ without τ²), egad_inverse_temperature (κ = −0.5);
  3. the live twin: --live methods (kd) on the first seed without the cache: the cache's distance to live on
     this corpus, so that the runs that decide are shown exact where they ran;
  4. exact `egad eval` of every run on the held-out split (by-decile metrics included): the runs from the cache
     against the cache (`egad eval teacher_cache=…`: no teacher pass, within ~1e-6 of the live eval), the live
     twin with the live teacher;
  5. `egad report` of the sweep: mean ± sd per arm, paired differences to kd with 95 % t intervals, pictures.
Then:
  6. the decision (docs/results.md, written before the runs): per corpus the arms ranked by mean held-out KL;
     an arm is eligible when, on no corpus, its paired 95 % interval against kd lies wholly above zero; the
     default is the eligible arm with the best mean rank across the corpora. Also each arm against
     egad_no_temperature.
  7. the longer point: --long-factor × --steps (4×), --long-seeds (3), kd / egad / the arm chosen in 6 (or the
     best egad arm when that is kd), on --long-corpus, from its own cache: does the ranking hold?
Optional, off by default (the GPU-sized design of the mechanism study): --knobs, the sensitivity of EGAD's knobs.

Every egad command runs in OUT (corpora under OUT/data/, addressed relative to it, so their held-out splits do
not depend on where OUT lies). Each run is its own `egad distill` with its own dir (OUT/<corpus>/runs/
method:kd__trainer.seed:0 …). Running the command again goes on where it stopped: finished runs are kept, a run
cut off with a checkpoint resumes from it, a failed run is retried; a study dir holds one design (other
arguments are refused: use another --out). A stage that finished leaves OUT/.done/<stage> and is skipped after;
a stage with failed runs or evals stops the study, listing them, unless --keep-going. Writes OUT/study.md (stage
times, counts, the live twins, the decision table, the longer point) and OUT/study.json (the same numbers).

Cost: the default is sized to finish in about 2 hours on a 2-core CPU (docs/results.md gives the measured
estimate); --steps 150 is the demo's budget (about 4 hours there), --steps 1500 --student small the GPU design.
--smoke runs the same sequence on debug=smoke (tiny random models) in a few minutes: the test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dialogue_corpus
import prose_corpus

from egad_cli.config import conf_dir

METHODS = ("kd", "egad", "egad_no_temperature", "egad_target_entropy", "egad_unweighted_temperature",
           "egad_inverse_temperature")
CORPORA = ("embedded", "enwiki", "dialogue")
#: the arms every decision is paired against
BASELINE, NO_TEMPERATURE = "kd", "egad_no_temperature"
#: one knob at a time around its default (conf/method/egad.yaml and the group defaults): γ 1, κ 0.5, ρ 0.8, q 0.3, μ 1
KNOBS = ("curriculum.gamma=0.5,2", "temperature.kappa=0.25,1", "curriculum.rho=0.5,1",
         "branch.q=0.15,0.6", "branch.mu=0.5,2")
BLOCK, BATCH = 128, 4  #: the demo's block and batch: a step is 512 tokens
METRIC = "kl_forward"  #: eval.json's exact held-out KL(teacher ‖ student)


def egad_exe() -> str:
    beside = Path(sys.executable).with_name("egad")
    found = str(beside) if beside.is_file() else shutil.which("egad")
    if found is None:
        raise SystemExit("error: no `egad` command beside this Python or on PATH: run the study with the Python "
                         "of the environment egad is installed in (make study uses .venv)")
    return found


def egad(args: list[str], log: Path, cwd: Path) -> int:
    """Run one egad command in `cwd`, its output appended to `log`; its return code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ egad " + " ".join(args), flush=True)
    with log.open("a") as out:
        out.write("$ egad " + " ".join(args) + "\n")
        out.flush()
        proc = subprocess.Popen([egad_exe(), *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached egad too: let it write its checkpoint before this exits
            proc.wait()
            raise


def point_dir(sweep_dir: Path, point: list[str]) -> Path:
    """A run's dir, named by its overrides like a Hydra job dir (method:kd__trainer.seed:0): passable as run_dir=."""
    return sweep_dir / "__".join(o.replace("=", ":") for o in point)


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, args.out.resolve()
        self.state_file = self.out / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"stages": {}}
        self.seeds = [s for s in args.seeds.split(",") if s]
        self.debug = ["debug=smoke"] if args.smoke else []

    # ------------------------------------------------------------------ stages
    def stage(self, name: str, work) -> None:
        marker = self.out / ".done" / name
        if marker.is_file():
            print(f"[{name}] done before, skipped", flush=True)
            return
        start = time.perf_counter()
        problem = work()
        seconds = round(time.perf_counter() - start, 1)
        self.state["stages"][name] = {"seconds": seconds, "problem": problem}
        self.save()
        if problem:
            raise SystemExit(f"study stopped at stage {name}: {problem} (log under {self.out})")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{seconds}\n")
        print(f"[{name}] {seconds:.0f} s", flush=True)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")

    # ------------------------------------------------------------------ corpora
    def data_args(self, corpus: str, steps: int | None = None) -> list[str]:
        """The dataset overrides of a corpus (the cache records them: the runs from it need none)."""
        if self.args.smoke:
            budget = []  # the smoke config's own
        else:  # the cache holds what the runs read (a corpus with fewer tokens is read in several epochs)
            budget = [f"dataset.max_train_tokens={(steps or self.args.steps) * BLOCK * BATCH}",
                      f"dataset.max_val_tokens={self.args.val_tokens}"]
        if corpus == "embedded":
            return budget
        if corpus == "dialogue":  # records are split by the hash of their line (5 %: ~6,500 records)
            return ["dataset=jsonl", f"dataset.paths=[data/dialogue/{dialogue_corpus.OUT_FILE}]", *budget]
        # articles are long and few (92): 5 % of them by hash is 1 article (~14k tokens); 10 % is 7 (~60k tokens).
        # The smoke corpus has fewer: half, so that its held-out split is never empty
        share = [f"dataset.val_fraction={0.5 if self.args.smoke else 0.1}"]
        # relative to the study dir, where every egad command runs: a text corpus's held-out split is decided by
        # each file's path as the pattern spells it, so the split stays the same wherever the study dir lies
        return ["dataset=text", f"dataset.paths=[data/{corpus}/*.txt]", *budget, *share]

    def prose(self) -> str | None:
        target = self.out / "data" / "enwiki"
        if target.is_dir():
            shutil.rmtree(target)  # a half-written corpus from an interrupted stage
        dump = self.args.prose_dump
        argv = [str(target), "--min-chars", str(self.args.prose_min_chars)] + (["--dump", str(dump)] if dump else [])
        prose_corpus.main(argv)
        return None

    def dialogue(self) -> str | None:
        target = self.out / "data" / "dialogue"
        if target.is_dir():
            shutil.rmtree(target)
        source = self.args.dialogue_source
        dialogue_corpus.main([str(target)] + (["--source", str(source)] if source else []))
        return None

    # ------------------------------------------------------------------ per corpus
    def cache(self, area: str, corpus: str, steps: int | None = None) -> str | None:
        cache = self.out / area / "teacher-cache"
        student = [] if self.args.smoke else [f"student={self.args.student}"]  # smoke: its own tiny student
        code = egad(["cache", *self.data_args(corpus, steps), *student, f"out_dir={cache}", *self.debug],
                    self.out / area / "cache.log", self.out)
        return None if code == 0 else f"egad cache exited {code}"

    def train(self, area: str, sweep: str, points: list[list[str]], source: list[str], steps: int | None = None
              ) -> str | None:
        """One `egad distill` per point (its own overrides), into its own dir: a run that finished is kept, one
        cut off with a checkpoint is resumed from it (trainer.resume), one without is set aside under
        OUT/.attempts/ and started again; a finished run's checkpoints are deleted (its student is exported;
        at `small` a checkpoint with its optimizer state is ~340 MB)."""
        from egad_cli.engine.checkpoint import list_checkpoints

        sweep_dir, log = self.out / area / sweep, self.out / area / f"{sweep.replace('/', '-')}.log"
        failed = []
        for point in points:
            run_dir = point_dir(sweep_dir, point)
            if (run_dir / "summary.json").is_file():
                continue
            resume = []
            if list_checkpoints(run_dir / "checkpoints"):
                resume = [f"trainer.resume={run_dir}"]
            elif run_dir.exists():
                aside = self.out / ".attempts" / f"{run_dir.relative_to(self.out)}.{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                run_dir.rename(aside)
            code = egad(["distill", *source, *point, *self.train_args(steps), *resume, f"hydra.run.dir={run_dir}",
                         *self.debug], log, self.out)
            if code == 0 and (run_dir / "summary.json").is_file():
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            else:
                failed.append(f"{run_dir.name} (exit {code})")
        return self.failures(failed, len(points), "runs", log)

    def failures(self, failed: list[str], total: int, what: str, log: Path) -> str | None:
        if not failed:
            return None
        message = (f"{len(failed)} of {total} {what} failed: {', '.join(failed[:4])}{' …' if len(failed) > 4 else ''}"
                   f" (see {log})")
        if self.args.keep_going:
            print(f"warning: {message}; going on (--keep-going)", flush=True)
            return None
        return f"{message}; run the study again to retry just those, or pass --keep-going to go on without them"

    def cached(self, area: str) -> list[str]:
        return [f"teacher_cache={self.out / area / 'teacher-cache'}"]

    def runs(self, corpus: str) -> str | None:
        # seed by seed, every arm on a seed before the next seed: a study cut short still pairs every arm with kd
        points = [[f"method={m}", f"trainer.seed={s}"] for s in self.seeds for m in self.args.methods]
        return self.train(corpus, "runs", points, self.cached(corpus))

    def train_args(self, steps: int | None = None) -> list[str]:
        if self.args.smoke:
            return []
        steps = steps or self.args.steps
        warmup = max(1, steps // 10)
        return [f"student={self.args.student}", f"trainer.max_steps={steps}",
                f"trainer.warmup_steps={warmup}", f"trainer.ckpt_every={max(50, steps // 5)}",
                "trainer.keep_ckpts=1", f"trainer.batch_size={BATCH}"]

    def live(self, corpus: str) -> str | None:
        points = [[f"method={m}", f"trainer.seed={self.seeds[0]}"] for m in self.args.live]
        return self.train(corpus, "live", points, self.data_args(corpus))

    def sensitivity(self) -> str | None:
        seeds = self.seeds[: self.args.sensitivity_seeds]
        problems = []
        for key, values in self.args.knobs:
            points = [["method=egad", f"{key}={v}", f"trainer.seed={s}"] for v in values for s in seeds]
            problem = self.train("embedded", f"sensitivity/{key}", points, self.cached("embedded"))
            if problem:
                problems.append(problem)
        return "; ".join(problems) or None

    def evaluate(self, area: str) -> str | None:
        """Exact `egad eval` of every finished run not yet evaluated: the runs trained from a cache against that
        (exact) cache, its stored states through the teacher's head, with no teacher pass (within ~1e-6 of the
        live eval); the live twins with the live teacher, so that each corpus keeps one fully live measurement."""
        from omegaconf import OmegaConf

        pending = [p for p in self.run_dirs(self.out / area) if (p / "summary.json").is_file()
                   and not (p / "eval.json").is_file()]
        if not pending:
            return None
        log = self.out / area / "eval.log"
        by_cache: dict[str | None, list[Path]] = {}
        for p in pending:
            by_cache.setdefault(OmegaConf.load(p / "config.yaml").get("teacher_cache"), []).append(p)
        for n, (cache, runs) in enumerate(sorted(by_cache.items(), key=lambda kv: str(kv[0]))):
            egad(["eval", "-m", f"run_dir={','.join(str(p) for p in runs)}", "eval.max_new_tokens=0",
                  "eval.onpolicy_prompts=0", *([f"teacher_cache={cache}"] if cache else []),
                  f"hydra.sweep.dir={self.out / area / 'eval' / str(n)}", *self.debug], log, self.out)
        failed = [p.name for p in pending if not (p / "eval.json").is_file()]
        return self.failures(failed, len(pending), "evals", log)

    def report(self, area: str) -> str | None:
        code = egad(["report", f"sweep_dir={self.out / area / 'runs'}", f"sort_by=eval.{METRIC}"],
                    self.out / area / "report.log", self.out)
        return None if code == 0 else f"egad report exited {code}"

    # ------------------------------------------------------------------ the longer point
    def long_methods(self) -> list[str]:
        """kd, egad and the arm the decision chose, without repeats."""
        decision = self.decision()
        pick = decision["default"]
        return list(dict.fromkeys(m for m in (BASELINE, "egad", pick) if m and m in self.args.methods))

    def long_runs(self) -> str | None:
        steps = self.args.steps * self.args.long_factor
        points = [[f"method={m}", f"trainer.seed={s}"] for m in self.long_methods() for s in self.long_seeds]
        return self.train("long", "runs", points, self.cached("long"), steps)

    # ------------------------------------------------------------------ reading the runs
    @staticmethod
    def run_dirs(root: Path) -> list[Path]:
        from egad_cli.commands.sweep import find_runs

        return [p for p in find_runs(root) if p.parent.name != "eval"] if root.is_dir() else []

    def read(self, root: Path) -> list:
        from egad_cli.commands.sweep import read_run

        return [read_run(p, root) for p in self.run_dirs(root)]

    def metric_table(self, root: Path) -> dict[str, dict[str, float]]:
        """method -> seed -> the held-out metric, over the evaluated runs under root."""
        table: dict[str, dict[str, float]] = {}
        for run in self.read(root):
            if f"eval.{METRIC}" in run.metrics:
                table.setdefault(run.overrides.get("method"), {})[run.overrides.get("trainer.seed")] = \
                    run.metrics[f"eval.{METRIC}"]
        return table

    def counts(self) -> dict[str, dict[str, int]]:
        """Per corpus (and the longer point): runs planned, finished (summary.json) and evaluated (eval.json)."""
        out = {}
        for corpus in self.args.corpora:
            planned = len(self.args.methods) * len(self.seeds) + len(self.args.live)
            if corpus == "embedded":
                planned += sum(len(v) for _, v in self.args.knobs) * len(self.seeds[: self.args.sensitivity_seeds])
            runs = self.read(self.out / corpus)
            out[corpus] = {"planned": planned, "finished": sum(r.status == "done" for r in runs),
                           "evaluated": sum(f"eval.{METRIC}" in r.metrics for r in runs)}
        if self.args.long_factor:
            runs = self.read(self.out / "long")
            out["long"] = {"planned": len(self.long_methods()) * len(self.long_seeds), "finished": sum(r.status == "done" for r in runs),
                           "evaluated": sum(f"eval.{METRIC}" in r.metrics for r in runs)}
        return out

    def crosscheck(self) -> list[dict]:
        """Each live run beside its cache-trained twin (same corpus, method and seed)."""
        rows = []
        for corpus in self.args.corpora:
            cached = self.metric_table(self.out / corpus / "runs")
            for method, seeds in self.metric_table(self.out / corpus / "live").items():
                for seed, live in seeds.items():
                    cache = cached.get(method, {}).get(seed)
                    rows.append({"corpus": corpus, "method": method, "seed": seed, "live": live, "cache": cache,
                                 "relative": (cache / live - 1) if cache is not None else None})
        return rows

    def decision(self) -> dict:
        """The rule of docs/results.md on the evaluated runs: per corpus the arms ranked by mean held-out KL (1 =
        lowest); eligible = on no corpus is the paired 95 % interval of (arm − kd) wholly above zero; the default
        = the eligible arm other than kd with the best mean rank (ties: the lower mean of the per-corpus relative
        differences to kd), or, with none eligible, the best arm other than kd. Only arms evaluated on every corpus
        with at least two seeds paired with kd take part."""
        from egad_cli.stats import paired_difference

        tables = {c: self.metric_table(self.out / c / "runs") for c in self.args.corpora}
        arms = [m for m in self.args.methods
                if all(len(set(tables[c].get(m, {})) & set(tables[c].get(BASELINE, {}))) >= 2 for c in tables)]
        rows: dict[str, dict] = {m: {"corpora": {}} for m in arms}
        for corpus, table in tables.items():
            means = {m: sum(table[m].values()) / len(table[m]) for m in arms}
            for rank, m in enumerate(sorted(arms, key=lambda m: means[m]), start=1):
                versus = {ref: paired_difference(table[m], table.get(ref, {})) if m != ref else None
                          for ref in (BASELINE, NO_TEMPERATURE, "egad")}
                rows[m]["corpora"][corpus] = {
                    "mean": means[m], "rank": rank, "n": len(table[m]),
                    "relative_to_kd": means[m] / means[BASELINE] - 1 if BASELINE in means else None,
                    **{f"vs_{ref}": None if d is None else {"mean": d.mean, "low": d.low, "high": d.high,
                                                            "text": d.text()} for ref, d in versus.items()}}
        for m, row in rows.items():
            per = row["corpora"].values()
            row["mean_rank"] = sum(c["rank"] for c in per) / len(per) if per else None
            row["worse_than_kd_on"] = [c for c, v in row["corpora"].items()
                                       if v["vs_kd"] and v["vs_kd"]["low"] is not None and v["vs_kd"]["low"] > 0]
            row["better_than_kd_on"] = [c for c, v in row["corpora"].items()
                                        if v["vs_kd"] and v["vs_kd"]["high"] is not None and v["vs_kd"]["high"] < 0]
            row["eligible"] = not row["worse_than_kd_on"]

        def key(m: str) -> tuple:
            rel = [v["relative_to_kd"] or 0.0 for v in rows[m]["corpora"].values()]
            return (rows[m]["mean_rank"], sum(rel) / max(1, len(rel)))

        candidates = sorted((m for m in arms if m != BASELINE), key=key)  # what `method=egad` can become
        eligible = [m for m in candidates if rows[m]["eligible"]]
        egad_arms = candidates
        default = eligible[0] if eligible else (candidates[0] if candidates else None)
        return {"arms": rows, "default": default, "best_egad": egad_arms[0] if egad_arms else None,
                "beats_kd_everywhere": [m for m in arms if len(rows[m]["better_than_kd_on"]) == len(tables)],
                "complete": len(arms) == len(self.args.methods)}

    def sensitivity_table(self) -> list[dict]:
        """Each knob value against egad at the defaults, paired by seed (mean difference, 95 % t interval)."""
        from egad_cli.stats import paired_difference

        default = self.metric_table(self.out / "embedded" / "runs").get("egad", {})
        rows = []
        for key, _ in self.args.knobs:
            by_value: dict[str, dict[str, float]] = {}
            for run in self.read(self.out / "embedded" / "sensitivity" / key):
                if f"eval.{METRIC}" in run.metrics:
                    by_value.setdefault(run.overrides.get(key), {})[run.overrides.get("trainer.seed")] = \
                        run.metrics[f"eval.{METRIC}"]
            for value, values in sorted(by_value.items(), key=lambda kv: as_number(kv[0])):
                diff = paired_difference(values, default)
                rows.append({"knob": key, "value": value, "n": len(values), "mean": sum(values.values()) / len(values),
                             "vs_default": None if diff is None else diff.text()})
        return rows

    def decision_lines(self, decision: dict) -> list[str]:
        corpora = self.args.corpora
        lines = ["", (f"Decision (docs/results.md): held-out {METRIC} per corpus, mean over seeds (rank); Δ vs kd and "
                 "vs egad_no_temperature: paired by seed, mean [95 % t]; eligible = never worse than kd with the "
                 "interval clear of zero."), "",
                 "| arm | " + " | ".join(corpora) + " | mean rank | eligible |", "|---|" + "---|" * (len(corpora) + 2)]
        for m, row in sorted(decision["arms"].items(), key=lambda kv: kv[1]["mean_rank"]):
            cells = [f"{row['corpora'][c]['mean']:.4f} ({row['corpora'][c]['rank']})" for c in corpora]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {row['mean_rank']:.2f} | "
                         f"{'yes' if row['eligible'] else 'no: worse on ' + ', '.join(row['worse_than_kd_on'])} |")
        for ref in (BASELINE, NO_TEMPERATURE):
            lines += ["", f"Δ vs {ref}:", "", "| arm | " + " | ".join(corpora) + " |", "|---|" + "---|" * len(corpora)]
            for m, row in decision["arms"].items():
                if m != ref:
                    cells = [(row["corpora"][c][f"vs_{ref}"] or {}).get("text", "—") for c in corpora]
                    lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", f"Default by the rule: {decision['default']}; best egad arm: {decision['best_egad']}; beats kd "
                  f"on every corpus (interval clear of zero): {', '.join(decision['beats_kd_everywhere']) or 'none'}"
                  + ("" if decision["complete"] else " (not every arm is evaluated on every corpus yet)")]
        return lines

    def summary(self) -> None:
        counts = self.counts()
        crosscheck = self.crosscheck()
        decision = self.decision()
        long_table = self.metric_table(self.out / "long" / "runs") if self.args.long_factor else {}
        self.state.update(counts=counts, crosscheck=crosscheck, decision=decision, long=long_table,
                          sensitivity=self.sensitivity_table() if "embedded" in self.args.corpora else [])
        self.save()
        budget = ("debug=smoke (its tiny models and steps)" if self.args.smoke else
                  f"{self.args.steps} steps × {BATCH} × {BLOCK} tokens per run, student={self.args.student}")
        lines = [f"# egad study: {self.out}", "", f"{budget}, seeds {','.join(self.seeds)}", "",
                 "| stage | wall time (s) |", "|---|---|"]
        lines += [f"| {name} | {s['seconds']:.0f} |" for name, s in self.state["stages"].items()]
        lines += ["", "| corpus | runs planned | finished | evaluated |", "|---|---|---|---|"]
        lines += [f"| {c} | {n['planned']} | {n['finished']} | {n['evaluated']} |" for c, n in counts.items()]
        if crosscheck:
            lines += ["", f"Live twins (exact eval {METRIC}):", "",
                      "| corpus | method | seed | live | from the cache | cache / live − 1 |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['corpus']} | {r['method']} | {r['seed']} | {fmt(r['live'])} | {fmt(r['cache'])} | "
                      f"{pct(r['relative'])} |" for r in crosscheck]
        if decision["arms"]:
            lines += self.decision_lines(decision)
        if long_table:
            lines += ["", (f"Longer point ({self.args.long_corpus}, {self.args.steps * self.args.long_factor} steps): "
                      f"{METRIC} mean over seeds"), "", "| arm | seeds | mean | Δ vs kd |", "|---|---|---|---|"]
            from egad_cli.stats import paired_difference

            for m, seeds in sorted(long_table.items(), key=lambda kv: sum(kv[1].values()) / len(kv[1])):
                d = paired_difference(seeds, long_table.get(BASELINE, {})) if m != BASELINE else None
                lines.append(f"| {m} | {len(seeds)} | {sum(seeds.values()) / len(seeds):.4f} | "
                             f"{d.text() if d else '—'} |")
        if self.state["sensitivity"]:
            lines += ["", (f"Sensitivity (method=egad, one knob at a time; Δ {METRIC} vs the defaults, paired by seed, "
                          "95 % t interval):"), "", "| knob | value | seeds | mean | Δ vs defaults |", "|---|---|---|---|---|"]
            lines += [f"| {r['knob']} | {r['value']} | {r['n']} | {r['mean']:.4f} | {r['vs_default'] or '—'} |"
                      for r in self.state["sensitivity"]]
        (self.out / "study.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    @property
    def long_seeds(self) -> list[str]:
        return [s for s in self.args.long_seeds.split(",") if s]

    def settings(self) -> dict:
        a = self.args
        return {"steps": a.steps, "tokens_per_run": a.steps * BLOCK * BATCH, "student": a.student,
                "seeds": self.seeds, "methods": a.methods, "corpora": a.corpora, "live": a.live,
                "knobs": [[k, v] for k, v in a.knobs], "sensitivity_seeds": a.sensitivity_seeds,
                "val_tokens": a.val_tokens, "smoke": a.smoke, "long": [a.long_factor, a.long_corpus, self.long_seeds]}

    def check_settings(self) -> None:
        """A study dir holds one design: going on with other settings would mix budgets in one table."""
        before, now = self.state.get("settings"), self.settings()
        if before is None:
            self.state["settings"] = now
            return
        changed = [k for k in now if before.get(k) != now[k]]
        if changed:
            raise SystemExit(f"error: {self.out} holds a study with other settings ({', '.join(changed)}: "
                             f"{', '.join(f'{before.get(k)} → {now[k]}' for k in changed)}); rerun with the same "
                             f"arguments to go on, or pass another --out")

    def run(self) -> None:
        self.check_settings()
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        for corpus in self.args.corpora:  # whole corpora, one after the other
            if corpus == "enwiki":
                self.stage("prose-corpus", self.prose)
            if corpus == "dialogue":
                self.stage("dialogue-corpus", self.dialogue)
            self.stage(f"{corpus}/cache", lambda c=corpus: self.cache(c, c))
            self.stage(f"{corpus}/runs", lambda c=corpus: self.runs(c))
            if self.args.live:
                self.stage(f"{corpus}/live", lambda c=corpus: self.live(c))
            if corpus == "embedded" and self.args.knobs and self.args.sensitivity_seeds:
                self.stage("embedded/sensitivity", self.sensitivity)
            self.stage(f"{corpus}/eval", lambda c=corpus: self.evaluate(c))
            self.stage(f"{corpus}/report", lambda c=corpus: self.report(c))
        if self.args.long_factor:
            steps = self.args.steps * self.args.long_factor
            self.stage("long/cache", lambda: self.cache("long", self.args.long_corpus, steps))
            self.stage("long/runs", self.long_runs)
            self.stage("long/eval", lambda: self.evaluate("long"))
            self.stage("long/report", lambda: self.report("long"))
        self.summary()


def fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def pct(share) -> str:
    return "—" if share is None else f"{100 * share:+.2f} %"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("study"))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of 4 × 128 tokens per run (150: the "
                    "demo's budget)")
    ap.add_argument("--student", default="tiny", help="a student preset (conf/student/)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--live", default="kd", help="methods trained live on the first seed of each corpus ('' for none)")
    ap.add_argument("--knobs", default="", help="';'-separated key=v1,v2 sweeps around method=egad on the embedded "
                    f"corpus ('' for none; the GPU design's: {';'.join(KNOBS)!r})")
    ap.add_argument("--long-factor", type=int, default=4, help="the longer point's budget in --steps (0: none)")
    ap.add_argument("--long-seeds", default="0,1,2")
    ap.add_argument("--long-corpus", default="embedded", choices=CORPORA)
    ap.add_argument("--sensitivity-seeds", type=int, default=3)
    ap.add_argument("--val-tokens", type=int, default=4096, help="held-out tokens of each corpus")
    ap.add_argument("--prose-dump", type=Path, default=None, help="a MediaWiki export instead of gensim's")
    ap.add_argument("--prose-min-chars", type=int, default=prose_corpus.MIN_CHARS)
    ap.add_argument("--dialogue-source", type=Path, default=None, help="a conversations file in chitchat-dataset's "
                    "format instead of the installed package's")
    ap.add_argument("--smoke", action="store_true", help="debug=smoke: tiny random models, a few steps")
    ap.add_argument("--keep-going", action="store_true", help="go on to the next stage when runs or evals failed "
                    "(they are listed; a rerun without it retries them)")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.corpora = [c for c in args.corpora.split(",") if c]
    args.live = [m for m in args.live.split(",") if m]
    knobs = [k for k in args.knobs.split(";") if k]
    bad_knobs = [k for k in knobs if "=" not in k or not k.split("=", 1)[1].strip(",")]
    if bad_knobs:
        ap.error(f"--knobs: each must be key=v1[,v2…] (got {bad_knobs})")
    args.knobs = [(k.split("=", 1)[0], [v for v in k.split("=", 1)[1].split(",") if v]) for k in knobs]
    unknown = [c for c in args.corpora if c not in CORPORA]
    if unknown:
        ap.error(f"--corpora: unknown {unknown} ({', '.join(CORPORA)})")
    if BASELINE not in args.methods:
        ap.error(f"--methods: every decision is paired against {BASELINE}: keep it")
    if args.long_factor < 0:
        ap.error("--long-factor must be >= 0")
    if args.long_factor and args.long_corpus not in args.corpora:
        ap.error(f"--long-corpus {args.long_corpus} is not among --corpora")
    if args.long_factor and not all(s.isdigit() for s in args.long_seeds.split(",") if s):
        ap.error(f"--long-seeds: comma-separated non-negative integers (got {args.long_seeds!r})")
    presets = sorted(p.stem for p in (conf_dir() / "method").glob("*.yaml"))
    for flag, names in (("--methods", args.methods), ("--live", args.live)):
        wrong = [m for m in names if m not in presets]
        if wrong:
            ap.error(f"{flag}: no method preset {wrong} (conf/method/: {', '.join(presets)})")
    if not args.methods:
        ap.error("--methods: at least one")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if not args.seeds.strip(",") or not all(s.isdigit() for s in args.seeds.split(",") if s):
        ap.error(f"--seeds: comma-separated non-negative integers (got {args.seeds!r})")
    if args.knobs and args.sensitivity_seeds and "embedded" in args.corpora and "egad" not in args.methods:
        ap.error("--knobs: the sensitivity runs are paired with method=egad at its defaults: keep egad in --methods "
                 "(or pass --knobs '')")
    return args


def check_knob_keys(knobs: list[tuple[str, list[str]]], cwd: Path) -> None:
    """Each knob composes with method=egad (`egad distill --cfg job` fails on an unknown key or a value of the
    wrong type), before any run: a typo found after the cache build would cost hours. A value out of range is
    refused by each run's own validation, which names the key."""
    for key, values in knobs:
        for value in values:
            done = subprocess.run([egad_exe(), "distill", "--cfg", "job", "method=egad", f"{key}={value}"],
                                  capture_output=True, text=True, check=False, cwd=cwd)
            if done.returncode != 0:
                reason = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["(no message)"]
                raise SystemExit(f"error: --knobs {key}={value} does not compose with method=egad: {reason[0]}")


def as_number(text: str | None) -> tuple:
    try:
        return (0, float(text))
    except (TypeError, ValueError):
        return (1, str(text))


if __name__ == "__main__":
    arguments = parse()
    check_knob_keys(arguments.knobs if arguments.sensitivity_seeds else [], Path.cwd())
    Study(arguments).run()
