"""Typed schemas of the analysis commands: egad eval, egad inspect-entropy, egad report.

They reuse the group schemas of ``schema.py`` (teacher, student, dataset, …) so the same YAML
files in conf/ compose into every command, and they validate the same way: ``problems()``
collects every range/choice error and ``egad_cli.config.validate`` reports them all at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from egad_cli.config.policies import (
    BranchConfig,
    CurriculumConfig,
    DifficultyConfig,
    LossConfig,
    TemperatureConfig,
    WeightingConfig,
)
from egad_cli.config.problems import Problems
from egad_cli.config.schema import (
    DatasetConfig,
    EvalConfig,
    MethodConfig,
    OnPolicyConfig,
    StudentConfig,
    TeacherConfig,
)

SPLITS = ("train", "val", "all")
CACHE_DTYPES = ("float16", "bfloat16", "float32")
#: exponents a = 1/τ of the cached tail power sums: τ from 4 down to 0.25, with τ = 1 exact
#: (the same grid as ``egad_cli.losses.cached.DEFAULT_EXPONENTS``; kept here so config needs no torch)
TAIL_EXPONENTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
DEVICES_HELP = "valid: auto, cpu, cuda, cuda:N"
#: teacher-cache formats (DESIGN §7; docs/teacher-cache.md has the measurements behind the defaults)
CACHE_KINDS = ("exact", "sampled", "topk")
#: k when `k` is null: a few exact top ids beside the draws (sampled); the older top-k format's k; none (exact)
DEFAULT_K = {"exact": 0, "sampled": 4, "topk": 48}
#: how kind=exact stores its hidden states: in `dtype`, or int8 with one fp32 scale per token
STATE_QUANTS = ("none", "int8")
SAMPLED_DRAWS = 16
#: the dual branch's default branch.n_pairs (conf/branch/dual): a default cache serves the default egad run
DEFAULT_STATE_PAIRS = 2


def _device_problems(device: str, precision: str, out: Problems) -> None:
    out.check(device in ("auto", "cpu", "cuda") or device.startswith("cuda:"), "device",
              f"got {device!r}; {DEVICES_HELP}")
    out.choice(precision, "precision", ("auto", "fp32", "bf16"))


@dataclass
class EvalCommandConfig:
    """egad eval: a student against its teacher on held-out data.

    With ``run_dir`` the teacher and dataset come from that distill run's config.yaml (your
    overrides on the command line still win) and the student from ``run_dir/student``.
    Without it, the teacher/dataset groups are used as composed and the student is
    ``student.path`` (group ``hf``) or any other student preset.
    """

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  #: token budget, batch size, prompts, max_new_tokens
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)  #: the on-policy metric's sampling (from run_dir)
    run_dir: Optional[str] = None  #: a distill run dir (has config.yaml and student/)
    #: an exact teacher cache dir (`egad cache`): the teacher's distribution read from its stored final states
    #: through its head, so no teacher runs (teacher and dataset: the cache's)
    teacher_cache: Optional[str] = None
    split: str = "val"  #: val (held-out, the default) | train | all (every block: your own held-out files)
    ece_bins: int = 15  #: equal-width confidence bins of the expected calibration error
    n_buckets: int = 10  #: teacher-entropy quantile buckets of the breakdown (10 = deciles)
    chunk_size: int = 1024  #: tokens per chunk when computing vocabulary-sized logits
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    precision: str = "auto"  #: auto (bf16 on CUDA, fp32 on a CPU: the metrics are exact) | fp32 | bf16
    progress: bool = True  #: show progress bars
    out_dir: Optional[str] = None  #: where eval.json goes (default: run_dir, else this command's output dir)
    cache_dir: str = "~/.cache/egad"  #: dequantised teachers and tokenised corpora
    output_dir: str = "."  #: this command's Hydra output dir (set by Hydra)

    def problems(self) -> Problems:
        out = Problems()
        self.teacher.problems(out)
        if self.run_dir is None and self.student.init == "hf" and not self.student.path:
            out.append("student.path: nothing to evaluate: set run_dir=<a distill run dir> or "
                       "student.path=<a transformers model dir sharing the teacher's tokenizer>")
        else:
            self.student.problems(out)
        self.dataset.problems(out)
        self.eval.problems(out)
        if self.eval.onpolicy_prompts > 0:
            self.onpolicy.problems(self.dataset.block_size, out)
        out.choice(self.split, "split", SPLITS)
        out.check(not (self.teacher_cache and self.split == "all"), "split",
                  "split=all reads every block of the files, and a teacher cache holds its train and val splits: "
                  "use split=val (or train) with teacher_cache, or drop teacher_cache")
        out.check(self.ece_bins >= 1, "ece_bins", "must be >= 1")
        out.check(self.n_buckets >= 1, "n_buckets", "must be >= 1")
        out.check(self.chunk_size > 0, "chunk_size", "must be positive")
        _device_problems(self.device, self.precision, out)
        return out


@dataclass
class InspectEntropyConfig:
    """egad inspect-entropy: one teacher pass; entropy histogram, quantiles, thresholds, tokens, positions.

    The method/loss/curriculum/temperature/branch groups are composed exactly as for
    ``egad distill``, so the thresholds shown are the ones that distill run would apply.
    """

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: Optional[StudentConfig] = None  #: optional: also show the student's entropy and the gap
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = MISSING
    difficulty: DifficultyConfig = MISSING
    curriculum: CurriculumConfig = MISSING
    temperature: TemperatureConfig = MISSING
    weighting: WeightingConfig = MISSING
    branch: BranchConfig = MISSING
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)  #: composed with the method presets; unused here
    run_dir: Optional[str] = None  #: a distill run dir: its teacher, dataset, method groups and student/
    teacher_cache: Optional[str] = None  #: a teacher cache dir (`egad cache`): entropies read from it, no teacher pass
    split: str = "train"  #: train (what distillation sees, the default) | val | all (every block of the files)
    max_tokens: int = 4096  #: token budget of the pass (0 = the whole split), in blocks spread over the split
    batch_size: int = 4  #: sequences per forward pass
    bins: int = 24  #: histogram bins
    log_scale: bool = False  #: log-scale histogram bars (and PNG y axis)
    top_tokens: int = 10  #: how many highest / lowest mean-entropy tokens to list
    min_count: int = 3  #: a token must occur this often to be ranked by its mean entropy
    context_tokens: int = 12  #: tokens of context shown before each listed token
    position_buckets: int = 8  #: buckets of the by-position profile
    save: bool = False  #: write entropy.json, entropy_tokens.csv and entropy_hist.png to out_dir
    out_dir: Optional[str] = None  #: where to save (setting it implies save=true); default: the output dir
    chunk_size: int = 1024  #: tokens per chunk when computing vocabulary-sized logits
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    precision: str = "auto"  #: auto (bf16 on CUDA, fp32 on a CPU: the metrics are exact) | fp32 | bf16
    progress: bool = True  #: show progress bars
    cache_dir: str = "~/.cache/egad"  #: dequantised teachers and tokenised corpora
    output_dir: str = "."  #: this command's Hydra output dir (set by Hydra)

    def problems(self) -> Problems:
        out = Problems()
        self.teacher.problems(out)
        if self.student is not None:
            self.student.problems(out)
        for group in (self.dataset, self.method):
            group.problems(out)  # the policy groups are checked by validate() through their registries
        out.choice(self.split, "split", SPLITS)
        out.check(self.max_tokens >= 0, "max_tokens", "must be >= 0 (0 = the whole split)")
        out.check(self.batch_size > 0, "batch_size", "must be positive")
        out.check(2 <= self.bins <= 200, "bins", "must be in [2, 200]")
        out.check(self.top_tokens >= 0, "top_tokens", "must be >= 0")
        out.check(self.min_count >= 1, "min_count", "must be >= 1")
        out.check(self.context_tokens >= 0, "context_tokens", "must be >= 0")
        out.check(self.position_buckets >= 1, "position_buckets", "must be >= 1")
        out.check(self.chunk_size > 0, "chunk_size", "must be positive")
        _device_problems(self.device, self.precision, out)
        return out


@dataclass
class ReportConfig:
    """egad report: every run under a sweep directory in one table."""

    sweep_dir: Optional[str] = None  #: a multirun dir (or any dir of run dirs); default: the newest one
    sort_by: Optional[str] = "kl_after"  #: a column (metric or override key) to sort by; null keeps job order
    order: str = "auto"  #: asc | desc | auto (desc for agreement/accuracy/tokens-per-second, else asc)
    #: metrics in the terminal and Markdown tables (report.csv has every metric)
    columns: list[str] = field(default_factory=lambda: [
        "steps", "kl_before", "kl_after", "final.loss", "eval.bits_per_byte_student", "eval.ppl_student", "eval.kl_forward",
        "eval.kl_reverse", "eval.top1_agreement", "eval.ece", "eval.kl_forward_top_decile"])
    export: bool = True  #: write report.csv and report.md
    out_dir: Optional[str] = None  #: where report.csv / report.md go (default: sweep_dir)
    baseline: Optional[str] = "kd"  #: seed sweeps: paired differences to the runs with method=<baseline> (null: none)
    plots: bool = True  #: with export: report-curves/-metric/-deciles.png and report-plots.json (their numbers)

    def problems(self) -> Problems:
        out = Problems()
        out.choice(self.order, "order", ("asc", "desc", "auto"))
        return out


@dataclass
class CacheCommandConfig:
    """egad cache: one teacher pass over a dataset, stored so that distill runs (and sweeps) reuse it.

    kind=exact (the default): per predicting token the teacher's final hidden state (the one its output head
    reads), and once the head itself: a run from the cache recomputes the teacher's full distribution, so every
    divergence and statistic is the live one up to the state's storage rounding (docs/teacher-cache.md). Where
    the dual branch reads that layer, it is stored once.

    The compact kinds, for corpora too large for states. kind=sampled: the k most likely ids with their
    exact log-probabilities at T = 1, `draws` ids drawn from the rest of the teacher's distribution (unique
    ids, counts, log-probabilities: forward-KL-type divergences and their gradients estimated without bias,
    reverse-KL-type ones read over the stored ids and one bucket), the tail power sums on a grid of
    exponents 1/τ (the normaliser at any per-token τ). kind=topk keeps the top-k and one tail bucket
    instead of the draws (a coarse-grained, lower-bound divergence).

    Every kind stores the exact entropy at each of ``entropy_temps`` and (for the dual branch) hidden
    states at ``layers``.
    """

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)  #: with state_pairs: the student the states are for
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    kind: str = "exact"  #: exact (final states + head: the live loss) | sampled (top ids + draws from the tail: unbiased) | topk (top-k + one tail bucket)
    state_quant: str = "none"  #: kind=exact: none (states in `dtype`) | int8 (one fp32 scale per token: half the bytes)
    k: Optional[int] = None  #: sampled/topk: exact top log-probabilities per token; null: 4 (sampled) or 48 (topk); ≥ vocabulary: lossless
    draws: int = SAMPLED_DRAWS  #: kind=sampled: ids drawn with replacement from the tail per token (1..255)
    seed: int = 0  #: kind=sampled: the draws' seed (with each block's place: the same command, the same bytes)
    draw_temperature: float = 1.0  #: kind=sampled: draw from p^(1/T) on the tail; 1/T must be one of `exponents`
    exponents: list[float] = field(default_factory=lambda: list(TAIL_EXPONENTS))  #: tail sums at a = 1/τ; must include 1
    entropy_temps: list[float] = field(default_factory=lambda: [1.0, 2.0])  #: exact entropies stored (EA-KD reads T′=2)
    layers: list[int] = field(default_factory=list)  #: teacher hidden states stored (dual branch), 1..num_layers
    state_pairs: int = DEFAULT_STATE_PAIRS  #: store the states branch=dual with branch.n_pairs=state_pairs reads for `student` (0: none)
    splits: list[str] = field(default_factory=lambda: ["train", "val"])  #: which splits of the dataset
    dtype: str = "float16"  #: storage of log-probs, tail sums and states (float32: lossless, 2x the bytes)
    shard_blocks: int = 64  #: blocks per shard file (the unit of atomic writes and of resuming)
    batch_size: int = 4  #: sequences per teacher forward
    chunk_size: int = 1024  #: tokens per chunk when computing vocabulary-sized logits
    device: str = "auto"  #: auto | cpu | cuda | cuda:N (under torchrun: each rank its local GPU)
    precision: str = "auto"  #: auto (bf16 on CUDA, fp32 on a CPU: the statistics are exact) | fp32 | bf16: the teacher's forward (the head is fp32 either way)
    progress: bool = True  #: show progress bars
    out_dir: Optional[str] = None  #: where the cache goes (default: <cache_dir>/teacher-cache/<key of the settings>)
    cache_dir: str = "~/.cache/egad"  #: dequantised teachers, tokenised corpora, and (by default) teacher caches
    command: str = "egad cache"  #: the command line that builds it (set by egad; printed in hints)
    output_dir: str = "."  #: this command's Hydra output dir (set by Hydra)

    def problems(self) -> Problems:
        out = Problems()
        self.teacher.problems(out)
        self.dataset.problems(out)
        out.choice(self.kind, "kind", CACHE_KINDS)
        out.choice(self.state_quant, "state_quant", STATE_QUANTS)
        out.check(self.state_quant == "none" or self.kind == "exact", "state_quant",
                  f"quantises the final states of kind=exact; kind={self.kind} stores its states in `dtype` "
                  f"(drop state_quant, or use kind=exact)")
        out.check(self.k is None or self.k >= 1, "k", f"must be >= 1, or null for the kind's default (got {self.k})")
        out.check(self.k is None or self.kind != "exact", "k",
                  f"kind=exact stores the states the whole distribution comes from, so it keeps no top-k; k applies "
                  f"to kind=sampled or kind=topk (got k={self.k}: drop it, or pick one of those kinds)")
        out.check(1 <= self.draws <= 255, "draws", f"must be in [1, 255] (counts are stored in one byte; got {self.draws})")
        exps = list(self.exponents)
        out.check(len(exps) > 0 and all(e > 0 for e in exps) and exps == sorted(set(exps)) and 1.0 in exps,
                  "exponents", f"must be positive, increasing, without repeats, and include 1.0 (got {exps})")
        out.check(self.draw_temperature > 0 and any(abs(1.0 / self.draw_temperature - e) < 1e-9 for e in exps),
                  "draw_temperature", f"1/draw_temperature must be one of exponents={exps} (got {self.draw_temperature}: "
                  f"1/T = {1.0 / self.draw_temperature if self.draw_temperature else float('inf'):g})")
        out.check(len(self.entropy_temps) > 0 and all(t > 0 for t in self.entropy_temps)
                  and 1.0 in self.entropy_temps, "entropy_temps",
                  f"must be positive temperatures including 1.0 (got {list(self.entropy_temps)})")
        out.check(self.state_pairs >= 0, "state_pairs", "must be >= 0 (0: no states for a student)")
        if self.state_pairs > 0:
            self.student.problems(out)
        out.check(all(layer >= 1 for layer in self.layers), "layers",
                  f"hidden-state indices start at 1 (0 is the embeddings; got {list(self.layers)})")
        out.check(len(self.splits) > 0 and all(sp in ("train", "val") for sp in self.splits), "splits",
                  f"must list train and/or val (got {list(self.splits)})")
        out.choice(self.dtype, "dtype", CACHE_DTYPES)
        out.check(self.shard_blocks >= 1, "shard_blocks", "must be >= 1")
        out.check(self.batch_size >= 1, "batch_size", "must be positive")
        out.check(self.chunk_size >= 1, "chunk_size", "must be positive")
        _device_problems(self.device, self.precision, out)
        return out

    def head_k(self, vocab: int) -> int:
        """The number of exact top ids stored: k, or the kind's default; at most the vocabulary (0: kind=exact,
        which stores the states the whole distribution comes from instead)."""
        if self.kind == "exact":
            return 0
        return min(DEFAULT_K[self.kind] if self.k is None else int(self.k), vocab)


def register_command_schemas() -> None:
    """Register the top-level schemas that conf/eval.yaml, inspect_entropy.yaml and report.yaml list first."""
    cs = ConfigStore.instance()
    cs.store(name="eval_schema", node=EvalCommandConfig)
    cs.store(name="inspect_entropy_schema", node=InspectEntropyConfig)
    cs.store(name="report_schema", node=ReportConfig)
    cs.store(name="cache_schema", node=CacheCommandConfig)
