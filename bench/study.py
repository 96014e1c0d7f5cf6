"""`make study`: does entropy guidance help, and which of EGAD's mechanisms? One command, resumable by stage.

    python bench/study.py [--out study] [--seeds 0,1,2,3,4] [--steps 1500] [--student small] [--smoke] …

Per corpus (the embedded Python source, and English Wikipedia prose from bench/prose_corpus.py):
  1. one teacher cache (`egad cache`, the default sampled format, with the states the dual branch reads for
     --student), holding the training blocks the runs read and the held-out split;
  2. `egad distill -m` from that cache: --methods × --seeds, at --steps optimizer steps of 4 × 128 tokens
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

Every egad command runs in OUT (the prose corpus is addressed as data/enwiki/*.txt, so its held-out split, which
follows each file's path as spelled, does not depend on where OUT lies). Writes OUT/study.md (the stage times, the share of runs that finished and were evaluated, the cross-check
and the sensitivity tables; the method tables are in OUT/<corpus>/runs/report.md with the pictures) and
OUT/study.json (the same numbers). A stage that finished leaves OUT/.done/<stage>; running the command again
goes on from the first stage that did not (delete OUT/.done/<stage> to redo one).

Cost on this 2-core CPU (measured, see docs/results.md): one run of the `small` student from the cache takes
~1.2 s per step, so the default study (11 methods × 5 seeds × 2 corpora + 2 live + 30 sensitivity runs at
1500 steps) is a multi-day CPU job; it is sized for a GPU. --steps, --seeds, --methods and --corpora scale it
down. --smoke runs the same sequence on debug=smoke (tiny random models) in about a minute: the test.
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

METHODS = ("kd", "egad", "eakd", "adakd", "rkl", "egad_only_curriculum", "egad_only_temperature",
           "egad_only_branch", "egad_no_curriculum", "egad_no_temperature", "egad_no_branch")
#: one knob at a time around its default (conf/method/egad.yaml and the group defaults): γ 1, κ 0.5, ρ 0.8, q 0.3, μ 1
KNOBS = ("curriculum.gamma=0.5,2", "temperature.kappa=0.25,1", "curriculum.rho=0.5,1",
         "branch.q=0.15,0.6", "branch.mu=0.5,2")
BLOCK, BATCH = 128, 4  #: the demo's block and batch: a step is 512 tokens
METRIC = "kl_forward"  #: eval.json's exact held-out KL(teacher ‖ student)


def egad(args: list[str], log: Path, cwd: Path) -> int:
    """Run one egad command in `cwd`, its output to `log`; the return code (a failed job of a sweep is not
    fatal)."""
    exe = Path(sys.executable).with_name("egad")
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ egad " + " ".join(args), flush=True)
    with log.open("a") as out:
        out.write("$ egad " + " ".join(args) + "\n")
        out.flush()
        return subprocess.run([str(exe), *args], stdout=out, stderr=subprocess.STDOUT, check=False,
                              cwd=cwd).returncode


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
        # articles are long and few (94): 5 % of them by hash is 2 articles, ~3k tokens; 10 % is 8, ~49k tokens.
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

    def runs(self, corpus: str, sweep: str, extra: list[str], methods: list[str], seeds: list[str]) -> str | None:
        sweep_dir = self.out / corpus / sweep
        code = egad(["distill", "-m", f"teacher_cache={self.out / corpus / 'teacher-cache'}",
                     f"method={','.join(methods)}", f"trainer.seed={','.join(seeds)}", *self.train_args(),
                     *extra, f"hydra.sweep.dir={sweep_dir}", *self.debug], self.out / corpus / f"{sweep}.log", self.out)
        return None if code in (0, 2) else f"egad distill exited {code}"  # 2: some jobs failed (counted later)

    def train_args(self) -> list[str]:
        if self.args.smoke:
            return []
        warmup = max(1, self.args.steps // 10)
        return [f"student={self.args.student}", f"trainer.max_steps={self.args.steps}",
                f"trainer.warmup_steps={warmup}", f"trainer.ckpt_every={max(50, self.args.steps // 5)}",
                f"trainer.batch_size={BATCH}"]

    def live(self) -> str | None:
        sweep_dir = self.out / "embedded" / "live"
        code = egad(["distill", "-m", f"method={','.join(self.args.live)}", f"trainer.seed={self.seeds[0]}",
                     *self.data_args("embedded"), *self.train_args(), f"hydra.sweep.dir={sweep_dir}",
                     *self.debug], self.out / "embedded" / "live.log", self.out)
        return None if code in (0, 2) else f"egad distill exited {code}"

    def sensitivity(self) -> str | None:
        seeds = self.seeds[: self.args.sensitivity_seeds]
        for knob in self.args.knobs:
            key = knob.split("=", 1)[0]
            problem = self.runs("embedded", f"sensitivity/{key}", [knob], ["egad"], seeds)
            if problem:
                return problem
        return None

    def evaluate(self, corpus: str) -> str | None:
        run_dirs = [p for p in self.run_dirs(self.out / corpus) if (p / "summary.json").is_file()
                    and not (p / "eval.json").is_file()]
        if not run_dirs:
            return None
        code = egad(["eval", "-m", f"run_dir={','.join(str(p) for p in run_dirs)}", "eval.max_new_tokens=0",
                     "eval.onpolicy_prompts=0", f"hydra.sweep.dir={self.out / corpus / 'eval'}", *self.debug],
                    self.out / corpus / "eval.log", self.out)
        return None if code in (0, 2) else f"egad eval exited {code}"

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
                values = sum(len(k.split("=", 1)[1].split(",")) for k in self.args.knobs)
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

    def sensitivity_table(self) -> list[dict]:
        """Each knob value against egad at the defaults, paired by seed (mean difference, 95 % t interval)."""
        from egad_cli.stats import paired_difference

        default = {r.overrides.get("trainer.seed"): r.metrics[f"eval.{METRIC}"]
                   for r in self.read(self.out / "embedded" / "runs")
                   if r.overrides.get("method") == "egad" and f"eval.{METRIC}" in r.metrics}
        rows = []
        for knob in self.args.knobs:
            key = knob.split("=", 1)[0]
            by_value: dict[str, dict[str, float]] = {}
            for run in self.read(self.out / "embedded" / "sensitivity" / key):
                if f"eval.{METRIC}" in run.metrics:
                    by_value.setdefault(run.overrides.get(key), {})[run.overrides.get("trainer.seed")] = \
                        run.metrics[f"eval.{METRIC}"]
            for value, values in sorted(by_value.items()):
                diff = paired_difference(values, default)
                rows.append({"knob": key, "value": value, "n": len(values), "mean": sum(values.values()) / len(values),
                             "vs_default": None if diff is None else diff.text()})
        return rows

    def summary(self) -> None:
        counts = self.counts()
        self.state.update(counts=counts, crosscheck=self.crosscheck() if "embedded" in self.args.corpora else [],
                          sensitivity=self.sensitivity_table() if "embedded" in self.args.corpora else [],
                          settings={"steps": self.args.steps, "tokens_per_run": self.args.steps * BLOCK * BATCH,
                                    "student": self.args.student, "seeds": self.seeds, "methods": self.args.methods,
                                    "smoke": self.args.smoke})
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
        if self.state["sensitivity"]:
            lines += ["", (f"Sensitivity (method=egad, one knob at a time; Δ {METRIC} vs the defaults, paired by seed, "
                          "95 % t interval):"), "", "| knob | value | seeds | mean | Δ vs defaults |", "|---|---|---|---|---|"]
            lines += [f"| {r['knob']} | {r['value']} | {r['n']} | {r['mean']:.4f} | {r['vs_default'] or '—'} |"
                      for r in self.state["sensitivity"]]
        (self.out / "study.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if "enwiki" in self.args.corpora:
            self.stage("prose-corpus", self.prose)
        for corpus in self.args.corpora:
            self.stage(f"{corpus}/cache", lambda c=corpus: self.cache(c))
            self.stage(f"{corpus}/runs", lambda c=corpus: self.runs(c, "runs", [], self.args.methods, self.seeds))
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
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.corpora = [c for c in args.corpora.split(",") if c]
    args.live = [m for m in args.live.split(",") if m]
    args.knobs = [k for k in args.knobs.split(";") if k]
    unknown = [c for c in args.corpora if c not in ("embedded", "enwiki")]
    if unknown:
        ap.error(f"--corpora: unknown {unknown} (embedded, enwiki)")
    bad_knobs = [k for k in args.knobs if not k.split("=", 1)[-1] or "=" not in k]
    if bad_knobs:
        ap.error(f"--knobs: each must be key=v1[,v2…] (got {bad_knobs})")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if not args.seeds.strip(","):
        ap.error("--seeds: at least one")
    return args


if __name__ == "__main__":
    Study(parse()).run()
