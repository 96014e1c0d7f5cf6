"""precision=auto: bf16 where the CPU runs bf16 matmuls natively, fp32 elsewhere, and what stays exact under bf16.

- the choice for each CPU capability, with the capability query stubbed (native AMX / AVX512-BF16, no bf16
  instructions, kernels capped by ONEDNN_MAX_CPU_ISA or ATEN_CPU_CAPABILITY, the override) and on CUDA; the
  measuring commands (cache, eval, inspect-entropy) stay fp32 at auto on a CPU;
- an explicit bf16 on an emulating CPU runs, with a warning that names the key and the measured slowdown;
- the start line and summary.json name the choice and why;
- under bf16 the exact statistics (a cache's log-probs and entropies, the eval's KL) match an fp64 reference
  computed from the same bf16 forward, within the bound of an fp32 head derived from the operands;
- a bf16 run from a teacher cache trains (CPU autocast refused the fp16 rows it reads).

The tests never depend on this machine's CPU: conftest sets EGAD_CPU_BF16=0, and each test here passes its own.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import egad

from egad_cli.engine.precision import ONEDNN_ISAS, CpuBf16, choose_precision, cpu_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NATIVE, EMULATED = CpuBf16(True, "AMX"), CpuBf16(False, "this CPU has neither AMX nor AVX512-BF16")
U32 = 2.0**-24  #: fp32 unit roundoff


@pytest.mark.parametrize(("flags", "native", "why"), [
    ((True, True), True, "AMX"),
    ((False, True), True, "AVX512-BF16"),
    ((False, False), False, "neither AMX nor AVX512-BF16"),
])
def test_the_cpu_flags_decide(flags, native, why):
    got = cpu_bf16(env={}, flags=flags, aten="AVX512")
    assert got.native is native and why in got.why


@pytest.mark.parametrize("isa", ["AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI", "SSE41"])
def test_onednn_capped_below_its_bf16_kernels_is_emulated(isa):
    got = cpu_bf16(env={"ONEDNN_MAX_CPU_ISA": isa}, flags=(True, True), aten="AVX512")
    assert not got.native and "ONEDNN_MAX_CPU_ISA" in got.why


@pytest.mark.parametrize("isa", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", "DEFAULT"])
def test_onednn_at_or_above_its_bf16_kernels_is_native(isa):
    assert cpu_bf16(env={"ONEDNN_MAX_CPU_ISA": isa}, flags=(True, True), aten="AVX512").native
    assert ONEDNN_ISAS.index("AVX512_CORE_BF16") < ONEDNN_ISAS.index("AVX512_CORE_AMX")


def test_aten_capped_at_avx2_is_emulated():
    got = cpu_bf16(env={"ATEN_CPU_CAPABILITY": "avx2"}, flags=(True, True), aten="AVX2")
    assert not got.native and "AVX2" in got.why


@pytest.mark.parametrize(("value", "native"), [("1", True), ("0", False)])
def test_the_override_wins_over_the_flags(value, native):
    got = cpu_bf16(env={"EGAD_CPU_BF16": value}, flags=(not native, not native), aten="AVX2" if native else "AVX512")
    assert got.native is native and got.why == f"EGAD_CPU_BF16={value}"


def test_auto_picks_bf16_on_a_native_cpu_and_fp32_elsewhere():
    native = choose_precision("auto", CPU, cpu=NATIVE)
    assert (native.name, native.dtype, native.warning) == ("bf16", torch.bfloat16, None)
    assert "native bf16" in native.why and "AMX" in native.why
    emulated = choose_precision("auto", CPU, cpu=EMULATED)
    assert (emulated.name, emulated.dtype, emulated.warning) == ("fp32", torch.float32, None)
    assert emulated.why == EMULATED.why


def test_auto_measures_in_fp32_on_any_cpu():
    """egad cache, eval and inspect-entropy (measures=True): what they output is exact, so auto is fp32 on a CPU
    even where bf16 is native; an explicit bf16 is still honoured; CUDA keeps bf16."""
    got = choose_precision("auto", CPU, key="precision", cpu=NATIVE, measures=True)
    assert (got.name, got.warning) == ("fp32", None) and "exact" in got.why
    assert choose_precision("bf16", CPU, key="precision", cpu=NATIVE, measures=True).name == "bf16"
    assert choose_precision("bf16", CPU, key="precision", cpu=EMULATED, measures=True).warning is not None
    assert choose_precision("auto", CUDA, key="precision", cpu=NATIVE, measures=True).name == "bf16"


def test_the_measuring_commands_say_fp32_at_auto(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EGAD_CPU_BF16", "1")
    cache = tmp_path / "cache"
    assert egad("cache", "debug=smoke", f"out_dir={cache}", f"hydra.run.dir={cache}-log") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "teacher on cpu in fp32 (auto: exact statistics are measured in fp32 on a CPU)" in out
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["teacher_precision"]["name"] == "fp32"
    assert egad("inspect-entropy", "debug=smoke", f"hydra.run.dir={tmp_path / 'inspect'}") == 0
    assert "on cpu in fp32 (auto: exact statistics" in " ".join(capsys.readouterr().out.split())


def test_auto_is_bf16_on_cuda_whatever_the_cpu():
    assert choose_precision("auto", CUDA, cpu=EMULATED).name == "bf16"
    assert choose_precision("fp32", CUDA, cpu=NATIVE).name == "fp32"


def test_fp32_asked_is_fp32_everywhere():
    for cpu in (NATIVE, EMULATED):
        got = choose_precision("fp32", CPU, cpu=cpu)
        assert (got.name, got.warning) == ("fp32", None)


def test_an_explicit_bf16_on_an_emulating_cpu_runs_with_a_warning():
    got = choose_precision("bf16", CPU, key="trainer.precision", cpu=EMULATED)
    assert got.name == "bf16" and got.warning is not None
    assert "trainer.precision=bf16" in got.warning and "emulated" in got.warning
    assert "4x to 20x as long as in fp32" in got.warning and "trainer.precision=auto picks fp32" in got.warning
    assert choose_precision("bf16", CPU, cpu=NATIVE).warning is None


def test_resolve_runtime_follows_the_choice(monkeypatch):
    from egad_cli.config.schema import TrainerConfig
    from egad_cli.engine.runtime import resolve_runtime

    monkeypatch.setenv("EGAD_CPU_BF16", "1")
    rt = resolve_runtime(TrainerConfig(device="cpu"))
    assert (rt.autocast_dtype, rt.teacher_dtype, rt.precision.name) == (torch.bfloat16, torch.bfloat16, "bf16")
    monkeypatch.setenv("EGAD_CPU_BF16", "0")
    rt = resolve_runtime(TrainerConfig(device="cpu"))
    assert (rt.autocast_dtype, rt.teacher_dtype, rt.precision.name) == (None, torch.float32, "fp32")


# ------------------------------------------------------------------------------- the CLI names the choice


def _smoke(run, *extra):
    return egad("distill", "debug=smoke", f"hydra.run.dir={run}", "trainer.export=false", "trainer.max_steps=2",
                "trainer.warmup_steps=0", *extra)


def test_the_start_line_and_summary_name_the_choice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EGAD_CPU_BF16", "1")
    assert _smoke(tmp_path / "auto") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "on cpu in bf16 (auto: this CPU has native bf16 matmuls (EGAD_CPU_BF16=1))" in out
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["precision"] == {"name": "bf16", "asked": "auto",
                                    "why": "this CPU has native bf16 matmuls (EGAD_CPU_BF16=1)"}
    monkeypatch.setenv("EGAD_CPU_BF16", "0")
    assert _smoke(tmp_path / "fp32") == 0
    assert "on cpu in fp32 (auto: EGAD_CPU_BF16=0)" in " ".join(capsys.readouterr().out.split())
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["precision"]["name"] == "fp32"


def test_an_explicit_bf16_run_on_an_emulating_cpu_warns(tmp_path, capsys):
    assert _smoke(tmp_path / "run", "trainer.precision=bf16") == 0  # conftest: EGAD_CPU_BF16=0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: trainer.precision=bf16 on a CPU without native bf16 matmuls (EGAD_CPU_BF16=0)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"]["name"] == "bf16" and "emulated" in summary["precision"]["why"]


def test_a_bf16_run_from_a_teacher_cache_trains(tmp_path):
    """The plan reads the cache's fp16 rows under the run's bf16 autocast (it failed in torch.cat)."""
    for kind in ("exact", "sampled"):
        cache = tmp_path / f"cache-{kind}"
        assert egad("cache", "debug=smoke", f"kind={kind}", f"out_dir={cache}", f"hydra.run.dir={cache}-log") == 0
        assert _smoke(tmp_path / kind, f"teacher_cache={cache}", "trainer.precision=bf16") == 0
        summary = json.loads((tmp_path / kind / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["kl_after"] is not None


# ------------------------------------------------------------------- what egad reports stays exact under bf16


def _bf16_teacher(vocab: int = 96, width: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logits of a realistic spread (tens of nats), where bf16 rounding of logits shows
        model.lm_head.weight.mul_(60.0)
    return model.to(torch.bfloat16)


def _fp32_head_bound(hidden: torch.Tensor, head: torch.Tensor) -> float:
    """The largest error of an fp32 matmul of these bf16 operands against exact arithmetic: each product of two
    bf16 values is exact in fp32, and a sum of D terms errs by at most γ_D·Σ|h_i·w_i| (γ_D = D·u/(1 − D·u))."""
    d = hidden.shape[-1]
    gamma = d * U32 / (1 - d * U32)
    return float(gamma * (hidden.double().abs() @ head.double().abs().T).max())


def _logp_tolerance(z_err: float, logp: torch.Tensor) -> float:
    """|Δ log p| from a logit error z_err (log-softmax shifts by at most 2·z_err) plus fp32's own rounding of
    the log-softmax (a few ulps of the largest |log p| and of the log-sum-exp over V terms)."""
    v = logp.shape[-1]
    return 2 * z_err + 8 * U32 * (float(logp.abs().max()) + v)


@pytest.mark.numerics
def test_a_bf16_teachers_cache_statistics_match_an_fp64_reference():
    """A cache built from a bf16 teacher (the forward in bf16): the stored log-probs and entropies are those of
    the teacher's bf16 final states through its head in exact arithmetic, within the fp32 head's bound; logits
    rounded to bf16 (the head's matmul in the teacher's dtype) miss it."""
    from egad_cli.models.documents import base_forward
    from egad_cli.teacher_cache.build import teacher_rows

    teacher = _bf16_teacher()
    ids = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(1))
    plan = {"kind": "topk", "k": 4, "layers": [], "exponents": [1.0], "entropy_temps": [1.0]}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as `egad cache precision=bf16` runs it
        rows = teacher_rows(teacher, ids, 96, plan, torch.float32, 1024)
        hidden = base_forward(teacher, ids).last_hidden_state[:, :-1].reshape(-1, 64)  # [N, D] bf16
    head = teacher.lm_head.weight.detach()  # [V, D] bf16
    ref = torch.log_softmax(hidden.double() @ head.double().T, dim=-1)  # [N, V]
    tol = _logp_tolerance(_fp32_head_bound(hidden, head), ref)
    ids_k = rows["topk_ids"].reshape(-1, 4).long()
    stored = rows["topk_logp"].reshape(-1, 4).double()
    assert (stored - ref.gather(1, ids_k)).abs().max() <= tol
    h_ref = -(ref.exp() * ref).sum(-1)  # [N]
    h_tol = tol * (float(h_ref.max()) + 1) + 8 * U32 * 96 * float((ref.exp() * ref.abs()).max())
    assert (rows["entropy"].reshape(-1).double() - h_ref).abs().max() <= h_tol
    # the tail's power sum at a = 1 is log(1 − Σ top-k p): the same bound through the k terms it subtracts
    tail_ref = torch.log1p(-ref.gather(1, ids_k).exp().sum(-1))
    assert (rows["log_tail"].reshape(-1).double() - tail_ref).abs().max() <= tol * 4 / (-torch.expm1(tail_ref)).min()
    # the test can fail: a head run in bf16 (bf16 logits) is far outside the bound
    rounded = torch.log_softmax((hidden @ head.T).double(), dim=-1)
    assert (rounded - ref).abs().max() > 10 * tol


@pytest.mark.numerics
def test_the_eval_kl_under_bf16_matches_an_fp64_reference():
    """egad eval's per-token KL in a bf16 run: the heads in fp32 on the bf16 forward's final states, within the
    bound those fp32 heads allow, against fp64 from the same states."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from egad_cli.data.packing import Packed
    from egad_cli.engine.precision import Precision
    from egad_cli.engine.runtime import Runtime
    from egad_cli.evaluation.passes import token_pass
    from egad_cli.models.documents import base_forward

    teacher = _bf16_teacher()
    torch.manual_seed(1)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                           max_position_embeddings=64)).eval()
    runtime = Runtime(CPU, torch.bfloat16, torch.bfloat16, precision=Precision("bf16", "bf16", "test"))
    ids = torch.randint(0, 96, (3, 17), generator=torch.Generator().manual_seed(2))
    data = Packed(ids=ids, mask=torch.ones_like(ids, dtype=torch.bool))
    got = token_pass(teacher, 96, data, runtime, 3, 1024, student=student, progress=False)["kl_forward"].double()
    with torch.no_grad(), runtime.autocast():
        t_h = base_forward(teacher, ids).last_hidden_state[:, :-1].reshape(-1, 64)
        s_h = base_forward(student, ids).last_hidden_state[:, :-1].reshape(-1, 32)
    t_w, s_w = teacher.lm_head.weight.detach(), student.lm_head.weight.detach()
    lp = torch.log_softmax(t_h.double() @ t_w.double().T, dim=-1)  # [N, V]
    lq = torch.log_softmax(s_h.double() @ s_w.double().T, dim=-1)
    ref = (lp.exp() * (lp - lq)).sum(-1)  # [N]
    eps_t = _logp_tolerance(_fp32_head_bound(t_h, t_w), lp)
    # the student's states and head are fp32 (autocast leaves the norm's output fp32): each product rounds too
    eps_s = _logp_tolerance(2 * _fp32_head_bound(s_h.float(), s_w), lq)
    # KL = Σ p (lp − lq): |Δ| ≤ ε_t·Σ p|lp − lq| (through p) + ε_t + ε_s, plus fp32's sum over V terms
    tol = eps_t * (1 + (lp.exp() * (lp - lq).abs()).sum(-1)) + eps_t + eps_s + 8 * U32 * 96 * (lp - lq).abs().max()
    assert ((got - ref).abs() <= tol).all()


def test_a_cache_is_never_continued_in_another_precision(tmp_path, capsys):
    """The teacher's precision is recorded in the plan; a second `egad cache` into the same out_dir at another
    precision is refused by name before anything is written (a resumed build would mix the two)."""
    cache = tmp_path / "cache"
    assert egad("cache", "debug=smoke", f"out_dir={cache}", f"hydra.run.dir={cache}-log") == 0  # fp32 (auto, CPU)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert egad("cache", "debug=smoke", "precision=bf16", f"out_dir={cache}", f"hydra.run.dir={cache}-log2") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "precision:" in err and "ran in fp32" in err and "precision=fp32" in err
    assert before == {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert egad("cache", "debug=smoke", "precision=fp32", f"out_dir={cache}", f"hydra.run.dir={cache}-log3") == 0
