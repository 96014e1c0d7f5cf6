"""Students trained from a teacher cache against their live twins: does the cache move the answer? Resumable.

    python bench/cache_vs_live.py [--out cache-vs-live] [--corpora embedded,enwiki] [--seeds 0,1,2]
        [--methods kd,egad,egad_no_temperature,rkl] [--steps 150] [--formats "exact:"]

Per corpus (the embedded Python source; English Wikipedia prose from bench/prose_corpus.py):
  1. one teacher cache per format (``--formats``: name:overrides pairs separated by ';', e.g.
     "exact:;int8:state_quant=int8;sampled16:kind=sampled;sampled64:kind=sampled draws=64"), each over exactly
     the blocks the runs read (``--steps`` × 4 × 128 tokens, one epoch) and the held-out split; its build time,
     bytes/token and its own measured error (manifest ``format_error``) are kept;
  2. ``egad distill`` of --methods × --seeds from each cache, and the same runs live (no cache: the teacher runs
     every step), each its own dir;
  3. exact ``egad eval`` of every run with the live teacher (no generations, no on-policy metric);
  4. per format and method: the mean held-out KL live and from the cache, cache − live paired by seed with its
     95 % t interval (egad_cli.stats.paired_difference), the relative deviation, whether the methods rank the
     same; the median step time (``time_step_s``) of each kind of run.
Writes OUT/cache_vs_live.md and OUT/cache_vs_live.json. Running it again skips what is done (a run with a
summary.json, an eval with an eval.json, a cache with a manifest.json; a run cut off starts again);
--methods/--seeds/--formats may grow between calls (the table covers what is done).

Cost on this 2-core CPU (measured 2026-12-05; docs/teacher-cache.md): a live run of 150 steps takes 4–6 min,
one from the exact cache 1.5–2 min, an eval ~35 s, a cache ~3 min.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import prose_corpus
from study import BATCH, BLOCK, egad, point_dir

from egad_cli.stats import paired_difference

METHODS = "kd,egad,egad_no_temperature,rkl"
EVAL_ARGS = ["eval.max_new_tokens=0", "eval.onpolicy_prompts=0"]


def data_args(corpus: str, steps: int, val_tokens: int) -> list[str]:
    """The dataset overrides of a corpus, as bench/study.py sets them (the cache holds what the runs read)."""
    budget = [f"dataset.max_train_tokens={steps * BLOCK * BATCH}", f"dataset.max_val_tokens={val_tokens}"]
    if corpus == "embedded":
        return budget
    return ["dataset=text", f"dataset.paths=[data/{corpus}/*.txt]", *budget, "dataset.val_fraction=0.1"]


def parse_formats(text: str) -> dict[str, list[str]]:
    formats = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, _, overrides = item.partition(":")
        formats[name] = shlex.split(overrides)
    return formats


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def median_step(run: Path) -> float | None:
    """The median time_step_s of a run (metrics.jsonl), its first step left out (warm-up)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [json.loads(line).get("time_step_s") for line in path.read_text().splitlines() if line.strip()]
    times = [t for t in times if t is not None][1:]
    return statistics.median(times) if times else None


class Driver:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, args.out.resolve()
        self.formats = parse_formats(args.formats)
        self.methods = [m for m in args.methods.split(",") if m]
        self.seeds = [s for s in args.seeds.split(",") if s]
        self.failed: list[str] = []

    def log(self, *parts: str) -> Path:
        return self.out / "logs" / ("-".join(parts) + ".log")

    def prose(self) -> None:
        target = self.out / "data" / "enwiki"
        if not any(target.glob("*.txt")):
            prose_corpus.main([str(target)])

    def cache(self, corpus: str, fmt: str) -> Path:
        root = self.out / corpus / f"cache-{fmt}"
        if not (root / "manifest.json").is_file():
            start = time.perf_counter()
            code = egad(["cache", *data_args(corpus, self.args.steps, self.args.val_tokens), *self.formats[fmt],
                         f"out_dir={root}", f"hydra.run.dir={root}-log"], self.log(corpus, "cache", fmt), self.out)
            if code != 0:
                self.failed.append(f"cache {corpus}/{fmt}")
            else:
                (root.parent / f"cache-{fmt}.seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
        return root

    def run(self, corpus: str, kind: str, method: str, seed: str, extra: list[str]) -> Path:
        run = point_dir(self.out / corpus / kind, [f"method={method}", f"trainer.seed={seed}"])
        if not (run / "summary.json").is_file():
            shutil.rmtree(run, ignore_errors=True)  # a run cut off: started again (runs are minutes)
            code = egad(["distill", f"method={method}", f"trainer.seed={seed}", *extra, f"hydra.run.dir={run}"],
                        self.log(corpus, kind, method, seed), self.out)
            if code != 0:
                self.failed.append(f"distill {corpus}/{kind}/{method}/{seed}")
                return run
        evaluated = (run / "eval.json").is_file() or egad(
            ["eval", f"run_dir={run}", *EVAL_ARGS], self.log(corpus, kind, method, seed, "eval"), self.out) == 0
        if not evaluated:
            self.failed.append(f"eval {corpus}/{kind}/{method}/{seed}")
        return run

    def go(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        corpora = [c for c in self.args.corpora.split(",") if c]
        if "enwiki" in corpora:
            self.prose()
        for corpus in corpora:
            live_args = data_args(corpus, self.args.steps, self.args.val_tokens)
            caches = {fmt: self.cache(corpus, fmt) for fmt in self.formats}
            for seed in self.seeds:  # seed-major: a cut-off driver leaves whole seeds done
                for method in self.methods:
                    for fmt, root in caches.items():
                        if (root / "manifest.json").is_file():
                            self.run(corpus, fmt, method, seed, [f"teacher_cache={root}"])
                    self.run(corpus, "live", method, seed, live_args)
        self.table(corpora)
        if self.failed:
            raise SystemExit("failed: " + ", ".join(self.failed))

    def kl(self, corpus: str, kind: str, method: str) -> dict[str, float]:
        out = {}
        for seed in self.seeds:
            ev = read(point_dir(self.out / corpus / kind, [f"method={method}", f"trainer.seed={seed}"]) / "eval.json")
            if ev is not None:
                out[seed] = float(ev["kl_forward"])
        return out

    def table(self, corpora: list[str]) -> None:
        result, lines = {}, ["# Students from a teacher cache against their live twins", "",
                             (f"{self.args.steps} steps of {BATCH} × {BLOCK} tokens; exact held-out KL(teacher ‖ "
                             f"student) from `egad eval` (live teacher); cache − live paired by seed, 95 % t interval."),
                             ""]
        for corpus in corpora:
            result[corpus] = {"formats": {}, "rows": []}
            lines += [f"## {corpus}", "", ("| format | B/token | build s | step s (median) | method | live | cache | "
                      "cache − live [95 %] | relative |"), "|---|---:|---:|---:|---|---:|---:|---|---:|"]
            live_steps = [median_step(point_dir(self.out / corpus / "live", [f"method={m}", f"trainer.seed={s}"]))
                          for m in self.methods for s in self.seeds]
            live_steps = [t for t in live_steps if t is not None]
            for fmt in self.formats:
                manifest = read(self.out / corpus / f"cache-{fmt}" / "manifest.json")
                if manifest is None:
                    continue
                from egad_cli.commands.cache_job import bytes_per_token

                seconds = (self.out / corpus / f"cache-{fmt}.seconds")
                info = {"bytes_per_token": round(bytes_per_token(manifest)[0], 1),
                        "build_s": float(seconds.read_text()) if seconds.is_file() else None,
                        "format_error": manifest.get("format_error")}
                steps = [median_step(point_dir(self.out / corpus / fmt, [f"method={m}", f"trainer.seed={s}"]))
                         for m in self.methods for s in self.seeds]
                steps = [t for t in steps if t is not None]
                info["step_s"] = statistics.median(steps) if steps else None
                info["live_step_s"] = statistics.median(live_steps) if live_steps else None
                result[corpus]["formats"][fmt] = info
                ranks = {}
                for method in self.methods:
                    live, cache = self.kl(corpus, "live", method), self.kl(corpus, fmt, method)
                    diff = paired_difference(cache, live)
                    if diff is None:
                        continue
                    mean_live = statistics.mean(live[s] for s in cache if s in live)
                    mean_cache = statistics.mean(cache[s] for s in cache if s in live)
                    ranks[method] = (mean_live, mean_cache)
                    interval = f"[{diff.low:+.4f}, {diff.high:+.4f}]" if diff.low is not None else "(1 seed)"
                    row = {"format": fmt, "method": method, "seeds": diff.n, "live": mean_live, "cache": mean_cache,
                           "diff": diff.mean, "low": diff.low, "high": diff.high, "relative": diff.mean / mean_live}
                    result[corpus]["rows"].append(row)
                    step = f"{info['step_s']:.2f} (live {info['live_step_s']:.2f})" if info["step_s"] and \
                        info["live_step_s"] else "–"
                    lines.append(f"| {fmt} | {info['bytes_per_token']:.0f} | {info['build_s'] or '–'} | {step} | "
                                 f"{method} ({diff.n} seeds) | {mean_live:.4f} | {mean_cache:.4f} | "
                                 f"{diff.mean:+.4f} {interval} | {100 * diff.mean / mean_live:+.2f} % |")
                if len(ranks) > 1:
                    same = sorted(ranks, key=lambda m: ranks[m][0]) == sorted(ranks, key=lambda m: ranks[m][1])
                    result[corpus].setdefault("same_ranking", {})[fmt] = same
                    lines.append(f"| {fmt} | | | | ranking | {' < '.join(sorted(ranks, key=lambda m: ranks[m][0]))} "
                                 f"| {' < '.join(sorted(ranks, key=lambda m: ranks[m][1]))} | "
                                 f"{'same' if same else 'differs'} | |")
            lines.append("")
        (self.out / "cache_vs_live.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.out / "cache_vs_live.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("cache-vs-live"))
    ap.add_argument("--corpora", default="embedded,enwiki")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps of 4 × 128 tokens per run (one epoch)")
    ap.add_argument("--val-tokens", type=int, default=8192, help="held-out tokens of each corpus")
    ap.add_argument("--formats", default="exact:", help="';'-separated name:overrides of `egad cache`")
    ap.add_argument("--table-only", action="store_true", help="only write the table from what is done")
    args = ap.parse_args(argv)
    driver = Driver(args)
    if args.table_only:
        driver.table([c for c in args.corpora.split(",") if c])
    else:
        driver.go()


if __name__ == "__main__":
    main()
