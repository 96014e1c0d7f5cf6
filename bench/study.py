"""`make study`: does entropy guidance help, and which of EGAD's mechanisms? One command, resumable.

    python bench/study.py [--out study] [--seeds 0,1,2,3,4] [--steps 1500] [--student small] [--smoke] …

Per corpus (the embedded Python source, and English Wikipedia prose from bench/prose_corpus.py):
  1. one teacher cache (`egad cache`, the default exact format, with the states the dual branch reads for
     --student), holding the training blocks the runs read and the held-out split;
  2. `egad distill` from that cache: --methods × --seeds, at --steps optimizer steps of 4 × 128 tokens
     (1500: 768,000 tokens, 10× the demo), student --student. The methods: kd, egad, eakd, adakd, rkl, and
     egad with each mechanism alone (egad_only_curriculum / _temperature / _branch: kd plus one) and with
     each one removed (egad_no_…: egad minus one), presets in conf/method/;
  3. exact `egad eval` of every run on the held-out split (live teacher; by-decile metrics and calibration
     included; generations and the on-policy metric left out);
  4. `egad report` of the sweep: mean ± sd per method, the paired difference to kd with its 95 % t interval,
     the seeds needed to resolve 1 %, and the pictures.
On the embedded corpus only:
  5. the live cross-check: --live methods (kd, egad) on the first seed without the cache, evaluated the same
     way; the table compares each with its cache-trained twin and the ranking of the two;
  6. the sensitivity of EGAD's knobs: one knob at a time around its default (--knobs: γ, κ, ρ, q, μ at
     half and double, ρ at 0.5 and 1), method=egad, on the first --sensitivity-seeds seeds, each value paired
     by seed with egad at the defaults (a grid, one knob at a time: 10 points instead of 3^5 = 243).

Every egad command runs in OUT (the prose corpus is addressed as data/enwiki/*.txt, so its held-out split,
which follows each file's path as spelled, does not depend on where OUT lies). Each run is its own `egad
distill` with its own dir (OUT/<corpus>/runs/method:kd__trainer.seed:0 …). Running the command again goes on
where it stopped: finished runs are kept, a run cut off with a checkpoint resumes from it, a failed run is
retried; a study dir holds one design (other arguments are refused: use another --out). A stage that finished
leaves OUT/.done/<stage> and is skipped after; a stage with failed runs or evals stops the study, listing them,
unless --keep-going. Writes OUT/study.md (the stage times, the share of runs that finished and were
evaluated, the cross-check and the sensitivity tables; the method tables are in OUT/<corpus>/runs/report.md
with the pictures) and OUT/study.json (the same numbers).

Cost on this 2-core CPU (measured, see docs/results.md): one run of the `small` student from the cache takes
~1.2 s per step, so the default study (11 methods × 5 seeds × 2 corpora + 2 live + 30 sensitivity runs at
1500 steps) is a multi-day CPU job; it is sized for a GPU. --steps, --seeds, --methods and --corpora scale it
down. --smoke runs the same sequence on debug=smoke (tiny random models) in 1–2 minutes: the test.
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
import prose_corpus

from egad_cli.config import conf_dir

METHODS = ("kd", "egad", "eakd", "adakd", "rkl", "egad_only_curriculum", "egad_only_temperature",
           "egad_only_branch", "egad_no_curriculum", "egad_no_temperature", "egad_no_branch")
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
    def data_args(self, corpus: str) -> list[str]:
        """The dataset overrides of a corpus (the cache records them: the runs from it need none)."""
        if self.args.smoke:
            budget = []  # the smoke config's own
        else:  # the cache holds what the runs read (a corpus with fewer tokens is read in several epochs)
            budget = [f"dataset.max_train_tokens={self.args.steps * BLOCK * BATCH}",
                      f"dataset.max_val_tokens={self.args.val_tokens}"]
        if corpus == "embedded":
            return budget
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

    # ------------------------------------------------------------------ per corpus
    def cache(self, corpus: str) -> str | None:
        cache = self.out / corpus / "teacher-cache"
        student = [] if self.args.smoke else [f"student={self.args.student}"]  # smoke: its own tiny student
        code = egad(["cache", *self.data_args(corpus), *student, f"out_dir={cache}", *self.debug],
                    self.out / corpus / "cache.log", self.out)
        return None if code == 0 else f"egad cache exited {code}"

    def train(self, corpus: str, sweep: str, points: list[list[str]], source: list[str]) -> str | None:
        """One `egad distill` per point (its own overrides), into its own dir: a run that finished is kept, one
        cut off with a checkpoint is resumed from it (trainer.resume), one without is set aside under
        OUT/.attempts/ and started again; a finished run's checkpoints are deleted (its student is exported;
        at `small` a checkpoint with its optimizer state is ~340 MB)."""
        from egad_cli.engine.checkpoint import list_checkpoints

        sweep_dir, log = self.out / corpus / sweep, self.out / corpus / f"{sweep.replace('/', '-')}.log"
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
            code = egad(["distill", *source, *point, *self.train_args(), *resume, f"hydra.run.dir={run_dir}",
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

    def cached(self, corpus: str) -> list[str]:
        return [f"teacher_cache={self.out / corpus / 'teacher-cache'}"]

    def runs(self, corpus: str) -> str | None:
        points = [[f"method={m}", f"trainer.seed={s}"] for m in self.args.methods for s in self.seeds]
        return self.train(corpus, "runs", points, self.cached(corpus))

    def train_args(self) -> list[str]:
        if self.args.smoke:
            return []
        warmup = max(1, self.args.steps // 10)
        return [f"student={self.args.student}", f"trainer.max_steps={self.args.steps}",
                f"trainer.warmup_steps={warmup}", f"trainer.ckpt_every={max(50, self.args.steps // 5)}",
                "trainer.keep_ckpts=1", f"trainer.batch_size={BATCH}"]

    def live(self) -> str | None:
        points = [[f"method={m}", f"trainer.seed={self.seeds[0]}"] for m in self.args.live]
        return self.train("embedded", "live", points, self.data_args("embedded"))

    def sensitivity(self) -> str | None:
        seeds = self.seeds[: self.args.sensitivity_seeds]
        problems = []
        for key, values in self.args.knobs:
            points = [["method=egad", f"{key}={v}", f"trainer.seed={s}"] for v in values for s in seeds]
            problem = self.train("embedded", f"sensitivity/{key}", points, self.cached("embedded"))
            if problem:
                problems.append(problem)
        return "; ".join(problems) or None

    def evaluate(self, corpus: str) -> str | None:
        pending = [p for p in self.run_dirs(self.out / corpus) if (p / "summary.json").is_file()
                   and not (p / "eval.json").is_file()]
        if not pending:
            return None
        log = self.out / corpus / "eval.log"
        egad(["eval", "-m", f"run_dir={','.join(str(p) for p in pending)}", "eval.max_new_tokens=0",
              "eval.onpolicy_prompts=0", f"hydra.sweep.dir={self.out / corpus / 'eval'}", *self.debug], log, self.out)
        failed = [p.name for p in pending if not (p / "eval.json").is_file()]
        return self.failures(failed, len(pending), "evals", log)

    def report(self, corpus: str) -> str | None:
        code = egad(["report", f"sweep_dir={self.out / corpus / 'runs'}", f"sort_by=eval.{METRIC}"],
                    self.out / corpus / "report.log", self.out)
        return None if code == 0 else f"egad report exited {code}"

    # ------------------------------------------------------------------ reading the runs
    @staticmethod
    def run_dirs(root: Path) -> list[Path]:
        from egad_cli.commands.sweep import find_runs

        return [p for p in find_runs(root) if p.parent.name != "eval"] if root.is_dir() else []

    def read(self, root: Path) -> list:
        from egad_cli.commands.sweep import read_run

        return [read_run(p, root) for p in self.run_dirs(root)]

    def counts(self) -> dict[str, dict[str, int]]:
        """Per corpus: runs planned, finished (summary.json) and evaluated (eval.json)."""
        out = {}
        for corpus in self.args.corpora:
            planned = len(self.args.methods) * len(self.seeds)
            if corpus == "embedded":
                values = sum(len(v) for _, v in self.args.knobs)
                planned += len(self.args.live) + values * len(self.seeds[: self.args.sensitivity_seeds])
            runs = self.read(self.out / corpus)
            out[corpus] = {"planned": planned, "finished": sum(r.status == "done" for r in runs),
                           "evaluated": sum(f"eval.{METRIC}" in r.metrics for r in runs)}
        return out

    def crosscheck(self) -> list[dict]:
        """Each live run beside its cache-trained twin (same method and seed)."""
        cached = {(r.overrides.get("method"), r.overrides.get("trainer.seed")): r
                  for r in self.read(self.out / "embedded" / "runs")}
        rows = []
        for run in self.read(self.out / "embedded" / "live"):
            key = (run.overrides.get("method"), run.overrides.get("trainer.seed"))
            live, cache = run.metrics.get(f"eval.{METRIC}"), getattr(cached.get(key), "metrics", {}).get(f"eval.{METRIC}")
            rows.append({"method": key[0], "seed": key[1], "live": live, "cache": cache,
                         "relative": (cache / live - 1) if live and cache is not None else None})
        return rows

    @staticmethod
    def same_ranking(rows: list[dict]) -> bool | None:
        """Whether the live runs rank the methods as their cache-trained twins do (None: fewer than two pairs)."""
        pairs = [r for r in rows if r["live"] is not None and r["cache"] is not None]
        if len(pairs) < 2:
            return None
        return (sorted(pairs, key=lambda r: r["live"]) == sorted(pairs, key=lambda r: r["cache"]))

    def sensitivity_table(self) -> list[dict]:
        """Each knob value against egad at the defaults, paired by seed (mean difference, 95 % t interval)."""
        from egad_cli.stats import paired_difference

        default = {r.overrides.get("trainer.seed"): r.metrics[f"eval.{METRIC}"]
                   for r in self.read(self.out / "embedded" / "runs")
                   if r.overrides.get("method") == "egad" and f"eval.{METRIC}" in r.metrics}
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

    def summary(self) -> None:
        counts = self.counts()
        crosscheck = self.crosscheck() if "embedded" in self.args.corpora else []
        self.state.update(counts=counts, crosscheck=crosscheck, same_ranking=self.same_ranking(crosscheck),
                          sensitivity=self.sensitivity_table() if "embedded" in self.args.corpora else [])
        self.save()
        budget = ("debug=smoke (its tiny models and steps)" if self.args.smoke else
                  f"{self.args.steps} steps × {BATCH} × {BLOCK} tokens per run, student={self.args.student}")
        lines = [f"# egad study: {self.out}", "", f"{budget}, seeds {','.join(self.seeds)}", "",
                 "| stage | wall time (s) |", "|---|---|"]
        lines += [f"| {name} | {s['seconds']:.0f} |" for name, s in self.state["stages"].items()]
        lines += ["", "| corpus | runs planned | finished | evaluated |", "|---|---|---|---|"]
        lines += [f"| {c} | {n['planned']} | {n['finished']} | {n['evaluated']} |" for c, n in counts.items()]
        if self.state["crosscheck"]:
            lines += ["", f"Live cross-check (exact eval {METRIC}):", "",
                      "| method | seed | live | from the cache | cache / live − 1 |", "|---|---|---|---|---|"]
            lines += [f"| {r['method']} | {r['seed']} | {fmt(r['live'])} | {fmt(r['cache'])} | "
                      f"{pct(r['relative'])} |"
                      for r in self.state["crosscheck"]]
            if self.state["same_ranking"] is not None:
                lines += ["", f"Live and from the cache, the methods rank {'the same' if self.state['same_ranking'] else 'differently'}."]
        if self.state["sensitivity"]:
            lines += ["", (f"Sensitivity (method=egad, one knob at a time; Δ {METRIC} vs the defaults, paired by seed, "
                          "95 % t interval):"), "", "| knob | value | seeds | mean | Δ vs defaults |", "|---|---|---|---|---|"]
            lines += [f"| {r['knob']} | {r['value']} | {r['n']} | {r['mean']:.4f} | {r['vs_default'] or '—'} |"
                      for r in self.state["sensitivity"]]
        (self.out / "study.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def settings(self) -> dict:
        a = self.args
        return {"steps": a.steps, "tokens_per_run": a.steps * BLOCK * BATCH, "student": a.student,
                "seeds": self.seeds, "methods": a.methods, "corpora": a.corpora, "live": a.live,
                "knobs": [[k, v] for k, v in a.knobs], "sensitivity_seeds": a.sensitivity_seeds,
                "val_tokens": a.val_tokens, "smoke": a.smoke}

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
        if "enwiki" in self.args.corpora:
            self.stage("prose-corpus", self.prose)
        for corpus in self.args.corpora:
            self.stage(f"{corpus}/cache", lambda c=corpus: self.cache(c))
            self.stage(f"{corpus}/runs", lambda c=corpus: self.runs(c))
        if "embedded" in self.args.corpora:
            if self.args.live:
                self.stage("embedded/live", self.live)
            if self.args.knobs and self.args.sensitivity_seeds:
                self.stage("embedded/sensitivity", self.sensitivity)
        for corpus in self.args.corpora:
            self.stage(f"{corpus}/eval", lambda c=corpus: self.evaluate(c))
            self.stage(f"{corpus}/report", lambda c=corpus: self.report(c))
        self.summary()


def fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def pct(share) -> str:
    return "—" if share is None else f"{100 * share:+.2f} %"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("study"))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps of 4 × 128 tokens per run")
    ap.add_argument("--student", default="small", help="a student preset (conf/student/)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--corpora", default="embedded,enwiki")
    ap.add_argument("--live", default="kd,egad", help="methods trained live on the first seed ('' for none)")
    ap.add_argument("--knobs", default=";".join(KNOBS), help="';'-separated key=v1,v2 sweeps ('' for none)")
    ap.add_argument("--sensitivity-seeds", type=int, default=3)
    ap.add_argument("--val-tokens", type=int, default=16384, help="held-out tokens of each corpus")
    ap.add_argument("--prose-dump", type=Path, default=None, help="a MediaWiki export instead of gensim's")
    ap.add_argument("--prose-min-chars", type=int, default=prose_corpus.MIN_CHARS)
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
    unknown = [c for c in args.corpora if c not in ("embedded", "enwiki")]
    if unknown:
        ap.error(f"--corpora: unknown {unknown} (embedded, enwiki)")
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
