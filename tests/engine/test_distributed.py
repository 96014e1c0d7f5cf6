"""Under torchrun DDP or FSDP2 (gloo on CPU), one step over 2 ranks × 2 sequences equals one step over 4
sequences in one process: the loss uses global denominators, so the gradient must be the sum over ranks.
Checkpoints are full and keyed by name, so a run written at one world size resumes at another and
continues the same curve."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import egad
from safetensors.torch import load_file

from egad_cli.engine.metrics import read_metrics

# Each torchrun launch costs ~12 s on 2 cores: the tests marked slow are left out of `make test`, and .ci/run
# runs them, natively and under AVX2 kernels (`make test-slow`, `make test-kernels`).
pytestmark = pytest.mark.numerics

ARGS = ["debug=smoke", "method=kd", "trainer.max_steps=1", "trainer.warmup_steps=0", "eval.before=false"]


def _in_process(*argv: str) -> None:
    """`egad …` in this process (a one-rank reference needs no torchrun, nor a fresh interpreter's imports)."""
    saved = list(sys.argv)
    try:
        assert egad(*argv) == 0
    finally:
        sys.argv[:] = saved


@pytest.fixture(scope="module")
def single_step(tmp_path_factory):
    """The one-process reference step (4 sequences) that every distributed layout is compared with."""
    root = tmp_path_factory.mktemp("single_step")
    _in_process("distill", *ARGS, "trainer.batch_size=4", f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}")
    return root / "run"


def _free_port() -> int:
    """A port nothing listens on now: a fixed one collides with another test run on the same machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-20000:]


def assert_same_first_adam_step(got: dict, want: dict, lr: float) -> None:
    """Weights after AdamW's first step from the same init, where the gradients agree to rounding.

    Step 1 moves each weight by lr · (g / (|g| + ε) + wd · p): a weight whose gradient is far above Adam's
    ε = 1e-8 moves by ±lr whatever the rounding, but g / (|g| + ε) divides a rounding-level gradient
    difference by |g| + ε, so a weight whose gradient is within rounding of ε may move by any amount up to
    2·lr more or less, on whichever CPU's kernels sum the gradient in another order. Hence, in units of lr:
    every weight within 2·lr (weight decay moves both alike), and all but 0.1 % of each tensor within 1e-3·lr
    (seen: one weight in 2,048 off by 1.2e-3·lr, on AVX-512). A gradient of the wrong direction (a
    per-rank normalisation) moves most weights by ~lr; its scale is checked through grad_norm."""
    assert got.keys() == want.keys()
    for key, reference in want.items():
        diff = (got[key].double() - reference.double()).abs() / lr  # [*] in units of lr
        assert diff.max() <= 2.0 + 1e-3, (key, diff.max().item())
        off = (diff > 1e-3).sum().item()
        assert off <= max(1, 1e-3 * diff.numel()), (key, off, diff.numel())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="needs torchrun")
# The gradients add up in another order over 2 ranks than in one batch of 4 (and, with 2 micro-batches of 1
# on each rank, the first backward runs under no_sync, the second all-reduces).
@pytest.mark.parametrize("per_rank", [["trainer.batch_size=2"], ["trainer.batch_size=1", "trainer.grad_accum=2"]],
                         ids=["batch", "grad_accum"])
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_step_equals_single_process_step(tmp_path, per_rank, strategy, single_step):
    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    _run([torchrun, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "egad_cli", "distill", *ARGS,
          f"trainer.strategy={strategy}", *per_rank, f"hydra.run.dir={tmp_path / 'ddp'}"], env)
    # Adam's step is nearly scale-invariant, so compare the scale-sensitive quantities directly:
    # the pre-clip gradient norm and the loss summed over ranks. Both are sums over the step's tokens and
    # parameters in another order: fp32 rounding (seen over 40 steps of bench/strategies_cpu.py: loss <= 2.4e-7,
    # grad norm <= 3.3e-6 relative).
    (ddp_row,), (single_row,) = read_metrics(tmp_path / "ddp" / "metrics.jsonl"), \
        read_metrics(single_step / "metrics.jsonl")
    assert ddp_row["grad_norm"] == pytest.approx(single_row["grad_norm"], rel=1e-4)
    assert ddp_row["loss"] == pytest.approx(single_row["loss"], rel=1e-5)
    ddp = load_file(tmp_path / "ddp" / "student" / "model.safetensors")
    single = load_file(single_step / "student" / "model.safetensors")
    assert max(float(w.abs().max()) for w in single.values()) > 0
    lr = float(yaml.safe_load((single_step / "config.yaml").read_text())["trainer"]["lr"])
    assert_same_first_adam_step(ddp, single, lr)


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
CURVE = ["debug=smoke", "method=egad", "trainer.max_steps=4", "trainer.ckpt_every=2", "trainer.keep_ckpts=2",
         "trainer.log_every=1", "eval.before=false"]
TWO_RANKS = ["trainer.strategy=fsdp", "trainer.batch_size=2"]
ONE_RANK = ["trainer.strategy=single", "trainer.batch_size=4"]


def _distill(run_dir, env, overrides, ranks: int):
    """One rank: in this process (the test's EGAD_CACHE_DIR is env's); more: under torchrun."""
    if ranks == 1:
        assert env["EGAD_CACHE_DIR"] == os.environ["EGAD_CACHE_DIR"]
        _in_process("distill", *overrides, f"hydra.run.dir={run_dir}")
        return
    _run([TORCHRUN, "--nproc-per-node", str(ranks), "--master-port", str(_free_port()), "-m", "egad_cli", "distill",
          *overrides, f"hydra.run.dir={run_dir}"], env)


def _cut_to_step_2(src, dst):
    """A copy of a finished run as it was after its step-2 checkpoint (the step-4 one and the outputs gone)."""
    shutil.copytree(src, dst)
    for name in ("checkpoints/step-4", "student", "summary.json"):
        shutil.rmtree(dst / name, ignore_errors=True) if (dst / name).is_dir() else (dst / name).unlink(missing_ok=True)


def _assert_same_curve(rows, reference, steps, rel):
    by_step = {r["step"]: r for r in reference}
    for row in (r for r in rows if r["step"] in steps):
        for key in ("loss", "loss_logit", "loss_feature", "grad_norm"):
            assert row[key] == pytest.approx(by_step[row["step"]][key], rel=rel), (row["step"], key)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="needs torchrun")
def test_fsdp_curve_and_resume_across_world_sizes(tmp_path):
    """egad (curriculum, entropy temperature, dual branch with projectors in the sharded root): 4 steps under
    FSDP2 on 2 ranks follow the single-process curve; a 2-rank checkpoint resumed in one process, and a
    one-process checkpoint resumed on 2 ranks, both continue it; the exports are the same weights and load
    with plain transformers. Tolerance: rel 1e-4 (the reductions add in another order; Adam's first steps
    divide by |g|)."""
    from transformers import AutoModelForCausalLM

    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    _distill(single, env, [*CURVE, *ONE_RANK], ranks=1)
    _distill(fsdp, env, [*CURVE, *TWO_RANKS], ranks=2)
    reference = read_metrics(single / "metrics.jsonl")
    assert [r["step"] for r in reference] == [1, 2, 3, 4]
    _assert_same_curve(read_metrics(fsdp / "metrics.jsonl"), reference, {1, 2, 3, 4}, rel=1e-4)
    exported = {name: load_file(path / "student" / "model.safetensors") for name, path in
                (("single", single), ("fsdp", fsdp))}
    assert exported["single"].keys() == exported["fsdp"].keys()
    for key in exported["single"]:
        torch.testing.assert_close(exported["fsdp"][key], exported["single"][key], atol=1e-4, rtol=1e-4)
    assert AutoModelForCausalLM.from_pretrained(fsdp / "student").num_parameters() > 0

    # written on 2 ranks, resumed on 1; written on 1, resumed on 2
    for source, resumed, ranks, layout in ((fsdp, tmp_path / "fsdp_to_single", 1, ONE_RANK),
                                           (single, tmp_path / "single_to_fsdp", 2, TWO_RANKS)):
        _cut_to_step_2(source, resumed)
        _distill(resumed, env, [f"trainer.resume={resumed}", *layout], ranks=ranks)
        rows = read_metrics(resumed / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        _assert_same_curve(rows, reference, {3, 4}, rel=1e-4)


def test_resume_refuses_another_global_batch(tmp_path, capsys):
    run = tmp_path / "run"
    _in_process("distill", *CURVE, "trainer.max_steps=2", *ONE_RANK, f"hydra.run.dir={run}")
    capsys.readouterr()
    assert egad("distill", f"trainer.resume={run}", "trainer.max_steps=3", "trainer.batch_size=2",
                f"hydra.run.dir={run}") == 2
    err = capsys.readouterr().err
    assert "4 sequences per step" in err and "this run has 2" in err, err[-2000:]
    # refused before anything was written: the run's config still holds its own batch size
    assert "batch_size: 4" in (run / "config.yaml").read_text()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="needs torchrun")
def test_torchrun_with_the_single_strategy_is_refused(tmp_path):
    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "egad_cli",
                           "distill", "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "torchrun started 2 processes" in proc.stderr and "trainer.strategy=ddp" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _set_order(seed: int) -> list[str]:
    """Iteration order of the statistics of eakd with a curriculum in a process with this string-hash seed."""
    code = ("from egad_cli.policies.stats import student_entropy, teacher_entropy; print(','.join(s.key for s in "
            "frozenset({teacher_entropy(1.0), teacher_entropy(2.0), student_entropy(2.0)})))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="needs torchrun")
def test_ranks_with_different_hash_seeds_gather_the_same_statistics(tmp_path):
    """eakd with a curriculum reads three per-token statistics (the teacher's entropy at 1 for the difficulty
    rank, the teacher's and student's at 2 for the weights), gathered over the ranks for the policies. Two
    ranks whose string-hash seeds iterate them in other orders must still pair them: the rank over the whole
    step then sees the right values, and the 2-rank curve equals the one-process curve."""
    seeds = next((0, b) for b in range(1, 20) if _set_order(b) != _set_order(0))
    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["debug=smoke", "method=eakd", "curriculum=linear", "trainer.log_every=1", "eval.before=false"]
    _distill(tmp_path / "single", env, [*args, *ONE_RANK], ranks=1)
    per_rank_seed = f"PYTHONHASHSEED=$(( LOCAL_RANK == 0 ? {seeds[0]} : {seeds[1]} ))"
    command = f"{per_rank_seed} exec {sys.executable} -m egad_cli distill " + " ".join(
        [*args, *TWO_RANKS, f"hydra.run.dir={tmp_path / 'fsdp'}"])
    _run([TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "--no-python",
          "bash", "-c", command], env)
    _assert_same_curve(read_metrics(tmp_path / "fsdp" / "metrics.jsonl"),
                       read_metrics(tmp_path / "single" / "metrics.jsonl"), {1, 2, 3, 4}, rel=1e-4)


NO_HARD_ON_ONE_RANK = ["debug=smoke", "method=egad", "branch.q=0.001", "trainer.log_every=1", "eval.before=false"]


@pytest.fixture(scope="module")
def single_no_hard(tmp_path_factory):
    root = tmp_path_factory.mktemp("single_no_hard")
    _in_process("distill", *NO_HARD_ON_ONE_RANK, *ONE_RANK, f"cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}")
    return root / "run"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="needs torchrun")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_rank_without_hard_tokens_still_trains(tmp_path, strategy, single_no_hard):
    """The hard-token share is taken over the whole step, so with a tiny branch.q one rank gets none: its
    projectors still take part in the gradient reduction (a zero term), and the curve is one process's."""
    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    _distill(tmp_path / "multi", env, [*NO_HARD_ON_ONE_RANK, f"trainer.strategy={strategy}", "trainer.batch_size=2"],
             ranks=2)
    _assert_same_curve(read_metrics(tmp_path / "multi" / "metrics.jsonl"),
                       read_metrics(single_no_hard / "metrics.jsonl"), {1, 2, 3, 4}, rel=1e-4)


CROSS = ["student.tokenizer=train", "student.tokenizer_vocab_size=320", "method=egad"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="needs torchrun")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_cross_tokenizer_step_over_two_ranks_equals_one_process(tmp_path, strategy):
    """A student with its own tokenizer: each rank's blocks align a different share of positions, and the step
    (egad: the policies gather every rank's statistics; the dual branch) must still equal the one-process step."""
    cache = tmp_path / "cache"  # one cache: the student's BPE is trained once and both runs read it
    _in_process("distill", *ARGS, *CROSS, "trainer.batch_size=4", f"cache_dir={cache}",
                f"hydra.run.dir={tmp_path / 'single'}")
    env = {**os.environ, "EGAD_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    _run([TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "egad_cli", "distill", *ARGS,
          *CROSS, f"trainer.strategy={strategy}", "trainer.batch_size=2", f"hydra.run.dir={tmp_path / 'ranks'}"], env)
    (got,), (want,) = read_metrics(tmp_path / "ranks" / "metrics.jsonl"), \
        read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert 0 < want["aligned_frac"] <= 1 and 0 < got["aligned_frac"] <= 1  # (the ranks' shares, averaged)
    # the same tolerances as the same-tokenizer step above (sums in another order)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    lr = float(yaml.safe_load((tmp_path / "single" / "config.yaml").read_text())["trainer"]["lr"])
    assert_same_first_adam_step(load_file(tmp_path / "ranks" / "student" / "model.safetensors"),
                                load_file(tmp_path / "single" / "student" / "model.safetensors"), lr)
