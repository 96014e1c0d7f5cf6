"""Resume with adaptive policies: AdaKD's LATF (ratio, EMA, reference) and the running-quantile difficulty
histogram are saved in checkpoints, restored exactly, and the resumed run continues the uninterrupted loss curve.
Also: Ctrl-C saves a checkpoint that resumes the same curve; checkpoint files, pruning and resolution."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import cpu_runtime, losses_by_step, random_packed, tiny_models, typed_config

from egad_cli.engine.checkpoint import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import Interrupted, NonFiniteLoss, train
from egad_cli.errors import UserError

STEPS = 4

# beta=0 and eps=0 make LATF move r at every step after the first, so a lost state changes the next steps;
# r0=0.5 keeps the top-r selection active from the start.
ADAKD = ["method=adakd", "weighting.beta=0", "weighting.eps=0", "weighting.r0=0.5"]
QUANTILE = ["method=egad", "difficulty=running_quantile"]


class RecordingUnit(DistillUnit):
    """Records the unit state right after a checkpoint restored it; can raise Ctrl-C before a given step."""

    interrupt_at: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.restored = None
        self.steps_planned = 0

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.restored = copy.deepcopy(self.state_dict())

    def plan(self, micro_batches, progress):
        if self.interrupt_at is not None and self.steps_planned + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.steps_planned += 1
        return super().plan(micro_batches, progress)


def run(overrides, run_dir, resume=None, interrupt_at=None) -> RecordingUnit:
    extra = [f"trainer.resume={resume}"] if resume else []
    cfg = typed_config(["debug=smoke", *overrides, f"trainer.max_steps={STEPS}", "trainer.ckpt_every=2",
                        "trainer.keep_ckpts=3", *extra])
    teacher, student, _, vocab = tiny_models(cfg)
    unit = RecordingUnit(teacher, student, vocab, cfg, cpu_runtime(), STEPS)
    unit.interrupt_at = interrupt_at
    data = random_packed(24, 32, vocab, seed=1, prompt_lens=[i % 9 for i in range(24)])
    run_dir.mkdir(parents=True, exist_ok=True)
    train(unit, data, cfg.trainer, cpu_runtime(), run_dir, STEPS, progress=False)
    return unit


def assert_same_curve(first, resumed, steps=(3, 4)):
    for key in ("loss", "loss_logit", "loss_feature", "tau_mean", "weight_mean", "hard_frac", "lr"):
        want, got = losses_by_step(first, key), losses_by_step(resumed, key)
        for step in steps:
            assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), (key, step)


def test_adakd_resume_restores_latf_and_continues_the_curve(tmp_path):
    first = tmp_path / "first"
    run(ADAKD, first)
    saved = load_checkpoint(first / "checkpoints" / "step-2")["unit"]
    latf = saved["weighting"]
    assert latf["ema"] is not None and latf["ref"] is not None and latf["last_step"] == 2
    assert latf["ratio"] != 0.5, "LATF never moved r: the test would not notice a lost state"

    resumed_dir = tmp_path / "resumed"
    unit = run(ADAKD, resumed_dir, resume=first / "checkpoints" / "step-2")
    assert unit.restored["weighting"] == latf  # ratio, EMA, reference and step, exactly
    assert_same_curve(first, resumed_dir)
    assert losses_by_step(resumed_dir, "adakd_ratio") == losses_by_step(first, "adakd_ratio")
    final_a = load_checkpoint(first / "checkpoints" / "step-4")["unit"]["weighting"]
    final_b = load_checkpoint(resumed_dir / "checkpoints" / "step-4")["unit"]["weighting"]
    assert final_b == pytest.approx(final_a)


def test_running_quantile_resume_restores_the_histogram_and_continues_the_curve(tmp_path):
    first = tmp_path / "first"
    run(QUANTILE, first)
    saved = load_checkpoint(first / "checkpoints" / "step-2")["unit"]["difficulty"]
    assert int(saved["counts"].sum()) > 0

    resumed_dir = tmp_path / "resumed"
    unit = run(QUANTILE, resumed_dir, resume=first / "checkpoints" / "step-2")
    restored = unit.restored["difficulty"]
    assert torch.equal(restored["counts"], saved["counts"])
    assert restored["h_max"] == saved["h_max"] and restored["n_bins"] == saved["n_bins"]
    assert_same_curve(first, resumed_dir)
    final_a = load_checkpoint(first / "checkpoints" / "step-4")["unit"]["difficulty"]["counts"]
    final_b = load_checkpoint(resumed_dir / "checkpoints" / "step-4")["unit"]["difficulty"]["counts"]
    assert torch.equal(final_a, final_b) and int(final_a.sum()) > int(saved["counts"].sum())


def test_losing_the_policy_state_would_change_the_curve(tmp_path):
    """Control for the two tests above: the same resume without restoring the unit state diverges."""

    class Forgetful(RecordingUnit):
        def load_state_dict(self, state):
            self.restored = {}

    first = tmp_path / "first"
    run(ADAKD, first)
    cfg = typed_config(["debug=smoke", *ADAKD, f"trainer.max_steps={STEPS}", "trainer.ckpt_every=2",
                        f"trainer.resume={first / 'checkpoints' / 'step-2'}"])
    teacher, student, _, vocab = tiny_models(cfg)
    unit = Forgetful(teacher, student, vocab, cfg, cpu_runtime(), STEPS)
    data = random_packed(24, 32, vocab, seed=1, prompt_lens=[i % 9 for i in range(24)])
    (tmp_path / "forgetful").mkdir()
    train(unit, data, cfg.trainer, cpu_runtime(), tmp_path / "forgetful", STEPS, progress=False)
    want, got = losses_by_step(first), losses_by_step(tmp_path / "forgetful")
    assert got[3] != pytest.approx(want[3], rel=1e-6, abs=1e-6)


def test_ctrl_c_checkpoints_and_the_resume_matches_an_uninterrupted_run(tmp_path):
    first = tmp_path / "first"
    run(QUANTILE, first)
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted) as err:
        run(QUANTILE, stopped, interrupt_at=2)  # Ctrl-C while step 2 is being planned: step 1 is done
    assert "trainer.resume=" in str(err.value) and "step 1" in str(err.value)
    assert [p.name for p in list_checkpoints(stopped / "checkpoints")] == ["step-1"]
    resumed = tmp_path / "resumed"
    run(QUANTILE, resumed, resume=stopped)  # a run dir: its latest checkpoint
    assert_same_curve(first, resumed, steps=(2, 3, 4))


def test_non_finite_loss_is_reported_with_the_step(tmp_path):
    cfg = typed_config(["debug=smoke", "method=kd", "trainer.max_steps=2"])
    teacher, student, _, vocab = tiny_models(cfg)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.fill_(float("nan"))
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 2)
    with pytest.raises(NonFiniteLoss) as err:
        train(unit, random_packed(8, 32, vocab), cfg.trainer, cpu_runtime(), tmp_path, 2, progress=False)
    assert "step 1" in str(err.value)
    assert isinstance(err.value, UserError)  # reported as one message with exit status 2, no traceback


def test_checkpoints_are_atomic_pruned_and_resolved(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, {"step": step}, keep=2)
    assert [p.name for p in root.iterdir()] and sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]
    assert resolve_resume(str(tmp_path)) == root / "step-3"  # a run dir: its latest checkpoint
    assert resolve_resume(str(root / "step-2")) == root / "step-2"
    assert load_checkpoint(root / "step-3") == {"step": 3}
    # a half-written checkpoint (the temporary dir of a crash) is never picked up
    (root / ".step-4.tmp").mkdir()
    (root / "step-5").mkdir()  # no state file
    assert resolve_resume(str(tmp_path)) == root / "step-3"
    with pytest.raises(UserError) as err:
        resolve_resume(str(tmp_path / "elsewhere"))
    assert "trainer.resume" in str(err.value)
