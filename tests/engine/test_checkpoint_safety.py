"""Checkpoints never run code, survive kill -9 at any moment, and a damaged one is detected and skipped."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import random
import signal
import time

import pytest
import torch
from conftest import egad, smoke_argv

from egad_cli.engine import checkpoint as ckpt_mod
from egad_cli.engine.checkpoint import (
    TENSORS,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)


def state(step: int, n: int = 64) -> dict:
    g = torch.Generator().manual_seed(step)
    w = torch.randn(n, n, generator=g)
    return {"step": step, "modules": {"m": {"weight": w, "tied": w, "bias": torch.zeros(n)}},
            "optimizer": {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(n)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0]}]},
            "rng": {"python": (3, tuple(range(5)), None), "numpy": ("MT19937", torch.arange(4).numpy(), 2, 0, 0.0)},
            "unit": {"weighting": {"ratio": 0.5, "ema": None}}}


def test_round_trip_keeps_types_ties_and_values(tmp_path):
    s = state(3)
    path = save_checkpoint(tmp_path, 3, s, keep=2)
    got = load_checkpoint(path)
    assert got["step"] == 3 and got["unit"] == s["unit"]
    assert got["modules"]["m"]["weight"] is got["modules"]["m"]["tied"]  # shared storage stored once
    assert torch.equal(got["modules"]["m"]["weight"], s["modules"]["m"]["weight"])
    assert list(got["optimizer"]["state"]) == [0]  # int keys come back as ints
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert got["rng"]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert got["rng"]["numpy"][1].tolist() == [0, 1, 2, 3]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: run code when loaded
        return (open, (self.marker, "w"))


def test_a_pickle_checkpoint_is_refused_and_nothing_runs(tmp_path, capsys, corpus_dir):
    run = tmp_path / "received"
    ckpt = run / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": 2, "x": _Payload(str(marker))}))
    code = egad(*smoke_argv(tmp_path / "new", corpus_dir, f"trainer.resume={run}"))
    err = capsys.readouterr().err
    assert code == 2 and "pickle" in err and "state.pt" in err
    assert not marker.exists()
    for ref in (run, ckpt):
        with pytest.raises(CheckpointError, match="pickle"):
            resolve_resume(str(ref))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "extra_key"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        save_checkpoint(root, step, state(step), keep=3)
    newest = root / "step-2"
    data = (newest / TENSORS).read_bytes()
    if damage == "truncate":
        (newest / TENSORS).write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        (newest / TENSORS).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "delete_manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "state.json").write_text((newest / "state.json").read_text().replace('"ratio"', '"rati0"'))
    warnings = []
    assert resolve_resume(str(tmp_path), warn=warnings.append) == root / "step-1"
    if damage != "delete_manifest":  # without a manifest it is not listed as a checkpoint at all
        assert len(warnings) == 1 and "step-2" in warnings[0]
        with pytest.raises(CheckpointError, match="step-2"):
            resolve_resume(str(newest))  # named explicitly: refused, not silently replaced
    assert load_checkpoint(root / "step-1")["step"] == 1


def test_replacing_a_step_keeps_a_complete_copy_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 5, state(5), keep=2)
    save_checkpoint(root, 5, state(6), keep=2)  # same step again (e.g. Ctrl-C right after a periodic save)
    assert [p.name for p in list_checkpoints(root)] == ["step-5"]
    assert load_checkpoint(root / "step-5")["step"] == 6

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", disk_full)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(root, 6, state(6), keep=2)
    assert "No space left on device" in str(err.value) and "MiB" in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["step-5"]  # no .tmp left behind
    with pytest.raises(CheckpointError):
        save_checkpoint(root, 5, state(7), keep=2)  # a failed replace puts the old step-5 back
    assert sorted(p.name for p in root.iterdir()) == ["step-5"]
    assert load_checkpoint(root / "step-5")["step"] == 6  # the content of the last successful write


def _write_forever(root: str) -> None:
    torch.set_num_threads(1)
    step = 0
    while True:
        step += 1
        save_checkpoint(ckpt_mod.Path(root), step, state(step, n=256), keep=2)


def test_kill_9_at_random_moments_always_leaves_a_loadable_latest_checkpoint(tmp_path):
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    t0 = time.monotonic()
    for trial in range(24):
        root = tmp_path / f"t{trial}" / "checkpoints"
        save_checkpoint(root, 0, state(0, n=256), keep=2)  # a run always has one before it can crash
        child = ctx.Process(target=_write_forever, args=(str(root),))
        child.start()
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        latest = resolve_resume(str(root.parent))
        assert load_checkpoint(latest)["step"] == int(latest.name.split("-")[1].split(".")[0])
    assert time.monotonic() - t0 < 60


def test_a_checkpoint_is_hashed_once_however_often_it_is_checked(tmp_path, monkeypatch):
    """A resume checks the same checkpoint several times (entry, preflight, loop, load): each file is
    hashed once, and a later change to it is still caught."""
    root = tmp_path / "checkpoints"
    path = save_checkpoint(root, 1, state(1), keep=2)
    hashed = []
    real = ckpt_mod.file_sha256
    monkeypatch.setattr(ckpt_mod, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    ckpt_mod._verified_sha256.cache_clear()
    for _ in range(3):
        assert resolve_resume(str(tmp_path)) == path
    load_checkpoint(path)
    assert sorted(hashed) == ["state.json", TENSORS]
    data = (path / TENSORS).read_bytes()
    time.sleep(0.01)  # a later write: a new mtime
    (path / TENSORS).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
