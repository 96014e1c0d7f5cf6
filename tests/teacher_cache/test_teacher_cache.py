"""The teacher cache end to end through argv: `egad cache`, then `egad distill teacher_cache=…`.

Identity (a lossless cache reproduces the live run), round trip of every stored field, a killed
writer resuming to the same bytes, every refusal naming its key, a sweep from one cache, and no
teacher weights loaded when distilling from a cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import egad, losses_by_step, read_jsonl

SMOKE = ("debug=smoke",)


def build_cache(out: Path, *extra: str) -> Path:
    assert egad("cache", *SMOKE, f"out_dir={out}", f"hydra.run.dir={out}-log", *extra) == 0
    assert (out / "manifest.json").is_file()
    return out


def distill(run: Path, *extra: str) -> int:
    return egad("distill", *SMOKE, f"hydra.run.dir={run}", "trainer.export=false", *extra)


@pytest.fixture(scope="module", params=["exact", "sampled", "topk"])
def lossless(tmp_path_factory, request) -> Path:
    """fp32, the states the smoke student's dual branch reads, and for the compact kinds k ≥ V (the byte
    tokenizer's 259 tokens: an empty tail, nothing drawn); in each format."""
    root = tmp_path_factory.mktemp(f"lossless-{request.param}")
    k = () if request.param == "exact" else ("k=100000",)
    return build_cache(root / "cache", f"kind={request.param}", *k, "dtype=float32", "state_pairs=2",
                       f"cache_dir={root / 'egad'}")


@pytest.fixture(scope="module")
def lossy(tmp_path_factory) -> Path:
    """The sampled format with 8 exact ids and the default draws."""
    root = tmp_path_factory.mktemp("lossy")
    return build_cache(root / "cache", "kind=sampled", "k=8", f"cache_dir={root / 'egad'}")


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["kd", "egad", "eakd", "adakd", "jsd"])
def test_a_lossless_cache_reproduces_the_live_run(tmp_path, lossless, method):
    assert distill(tmp_path / "live", f"method={method}") == 0
    assert distill(tmp_path / "cached", f"method={method}", f"teacher_cache={lossless}") == 0
    live, cached = losses_by_step(tmp_path / "live"), losses_by_step(tmp_path / "cached")
    assert live.keys() == cached.keys() and len(live) == 4
    for step in live:
        assert cached[step] == pytest.approx(live[step], rel=1e-5, abs=1e-6), step
    a = json.loads((tmp_path / "live" / "summary.json").read_text())
    b = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert b["teacher_cache"] == str(lossless) and a["teacher_cache"] is None
    assert b["kl_after"] == pytest.approx(a["kl_after"], rel=1e-5)  # held-out KL from the cache's val split


def test_every_stored_field_round_trips(lossy):
    """What a reader gets back for any blocks is what the teacher computes for them (fp16 rounding only)."""
    from egad_cli.config.commands import CacheCommandConfig  # noqa: F401 - the schema the cache was built with
    from egad_cli.data import build_splits
    from egad_cli.models import load_teacher
    from egad_cli.teacher_cache.build import teacher_rows
    from egad_cli.teacher_cache.manifest import open_manifest
    from egad_cli.teacher_cache.shards import SplitReader

    root, manifest = open_manifest(lossy)
    from omegaconf import OmegaConf

    from egad_cli.config.schema import DatasetConfig, TeacherConfig

    teacher_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TeacherConfig), manifest["teacher"]))
    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), manifest["dataset"]))
    teacher, tok = load_teacher(teacher_cfg, Path(os.environ["EGAD_CACHE_DIR"]), torch.float32)
    splits = build_splits(data_cfg, tok)
    for name, part in (("train", splits.train), ("val", splits.val)):
        reader = SplitReader(root, manifest, name)
        packed = reader.packed()
        assert torch.equal(packed.ids, part.ids) and torch.equal(packed.mask, part.mask)
        blocks = torch.tensor([len(part) - 1, 0, 17 % len(part)])  # across shards, out of order
        got = reader.rows(blocks, torch.device("cpu"), states=True)
        from egad_cli.teacher_cache.build import block_uniforms

        length = part.ids.shape[1]
        uniforms = torch.stack([block_uniforms(manifest["seed"], name, int(b), length - 1, manifest["draws"])
                                for b in blocks])
        want = teacher_rows(teacher, part.ids[blocks], len(tok), manifest, torch.float32, 1024, uniforms)
        n = blocks.numel() * (part.ids.shape[1] - 1)
        assert got["top"].logp.shape == (n, 8) and got["top"].ids.dtype == torch.int64
        assert torch.equal(got["top"].ids, want["topk_ids"].reshape(n, -1).long())
        torch.testing.assert_close(got["top"].logp, want["topk_logp"].reshape(n, -1), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(got["top"].head.log_tail, want["log_tail"].reshape(n, -1), rtol=1e-3, atol=1e-3)
        counts = got["top"].sample_counts
        assert torch.equal(counts, want["sample_counts"].reshape(n, -1).float())
        assert (counts.sum(dim=-1) == manifest["draws"]).all()  # the tail of the smoke teacher always has mass
        assert torch.equal(got["top"].sample_ids, want["sample_ids"].reshape(n, -1).long())
        torch.testing.assert_close(got["top"].sample_logp, want["sample_logp"].reshape(n, -1), rtol=1e-3, atol=1e-3)
        for i, t in enumerate(manifest["entropy_temps"]):  # stored in fp32: exact
            torch.testing.assert_close(got["entropy"][t], want["entropy"].reshape(n, -1)[:, i])
        assert manifest["layers"] and set(got["states"]) == set(manifest["layers"])
        for layer in manifest["layers"]:
            torch.testing.assert_close(got["states"][layer], want[f"states.{layer}"].reshape(n, -1).float(),
                                       rtol=1e-3, atol=1e-3)


def _shard_digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.safetensors"))}


@pytest.mark.slow  # three `egad cache` processes
def test_a_killed_writer_resumes_to_the_same_bytes(tmp_path):
    env = dict(os.environ, EGAD_CACHE_DIR=str(tmp_path / "egad-cache"))
    argv = [sys.executable, "-m", "egad_cli", "cache", *SMOKE, "shard_blocks=2", "batch_size=1",
            f"hydra.run.dir={tmp_path / 'log'}"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*argv, f"out_dir={whole}"], env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([*argv, f"out_dir={killed}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(killed.glob("*.safetensors"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "killed before the end: the cache must not look complete"
    written = len([p for p in killed.glob("*.safetensors") if p.name != "head.safetensors"])  # shards
    assert 0 < written < len(_shard_digests(whole))
    # an unfinished cache is refused by name, with the command that finishes it
    code = distill(tmp_path / "run", f"teacher_cache={killed}")
    assert code == 2
    done = subprocess.run([*argv, f"out_dir={killed}"], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert f"{written} of" in done.stdout  # it continued, it did not start over
    assert _shard_digests(killed) == _shard_digests(whole)
    assert not list(killed.glob(".*.tmp-*"))


def test_a_sweep_runs_every_job_from_one_cache(tmp_path, lossy, monkeypatch):
    from egad_cli.models import loading

    def no_teacher(*args, **kwargs):
        raise AssertionError("a run from a teacher cache loaded the teacher's weights")

    monkeypatch.setattr(loading, "load_teacher", no_teacher)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", no_teacher)
    sweep = tmp_path / "sweep"
    assert egad("distill", "-m", *SMOKE, f"teacher_cache={lossy}", "method=kd,egad", "trainer.export=false",
                f"hydra.sweep.dir={sweep}") == 0
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["method"] for s in summaries] == ["kd", "egad"]
    assert all(s["teacher_cache"] == str(lossy) for s in summaries)
    assert all(len(read_jsonl(p)) == 4 for p in sweep.glob("*/metrics.jsonl"))
    assert not list(sweep.glob("*/error.txt"))


def test_reverse_kl_type_losses_read_the_sampled_cache_bucketed(tmp_path, lossy, monkeypatch, capsys):
    """rkl (reverse KL) and adakd from a sampled cache train on its bucketed view, with the warning that
    says so; kd (forward KL) on the unbiased estimate."""
    from egad_cli.losses.sampled import TeacherSampled

    calls = []
    original = TeacherSampled.bucketed
    monkeypatch.setattr(TeacherSampled, "bucketed", lambda self: calls.append(1) or original(self))
    for method, bucketed in (("rkl", True), ("adakd", True), ("kd", False)):
        calls.clear()
        assert distill(tmp_path / method, f"method={method}", f"teacher_cache={lossy}") == 0
        out = capsys.readouterr().out
        assert bool(calls) == bucketed and ("one bucket" in out) == bucketed, (method, out)
        losses = losses_by_step(tmp_path / method)
        assert len(losses) == 4 and all(math.isfinite(v) for v in losses.values())


def refusal(capsys, tmp_path, *argv) -> str:
    code = distill(tmp_path / "run", *argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training
    return " ".join(err.split())


def test_refuses_another_block_size_or_dataset_naming_the_key(capsys, tmp_path, lossy):
    err = refusal(capsys, tmp_path, f"teacher_cache={lossy}", "dataset.block_size=64")
    assert "dataset.block_size=64" in err and "(the cache has 32)" in err and "egad cache" in err
    assert "dataset.block_size=64" in err.split("build a cache for them:")[1]
    err = refusal(capsys, tmp_path, f"teacher_cache={lossy}", "teacher=smollm2")
    assert "teacher=smollm2" in err and "teacher=random" in err


def test_refuses_a_policy_that_needs_an_entropy_the_cache_lacks(capsys, tmp_path):
    cache = build_cache(tmp_path / "c", "kind=sampled", "entropy_temps=[1.0]")
    err = refusal(capsys, tmp_path, f"teacher_cache={cache}", "method=eakd")
    assert "T=2" in err and "'entropy_temps=[1,2]'" in err


def test_refuses_temperatures_outside_the_tail_grid(capsys, tmp_path):
    cache = build_cache(tmp_path / "c", "kind=sampled", "exponents=[0.5,1.0,2.0]")
    err = refusal(capsys, tmp_path, f"teacher_cache={cache}", "method=kd", "temperature.base=4")
    assert "temperature=fixed" in err and "[0.5, 2]" in err and "exponents=" in err


def test_refuses_the_dual_branch_without_its_states(capsys, tmp_path):
    cache = build_cache(tmp_path / "c", "state_pairs=0")
    err = refusal(capsys, tmp_path, f"teacher_cache={cache}", "method=egad")
    assert "branch=dual" in err and "layers=" in err
    err = refusal(capsys, tmp_path, f"teacher_cache={cache}", "student=from_teacher")
    assert "student.init=from_teacher" in err


def test_refuses_what_is_not_a_complete_cache(capsys, tmp_path, lossy):
    err = refusal(capsys, tmp_path, f"teacher_cache={tmp_path / 'nowhere'}")
    assert "teacher_cache" in err and "egad cache" in err
    fake = tmp_path / "fake"
    fake.mkdir()
    assert "not a teacher cache" in refusal(capsys, tmp_path, f"teacher_cache={fake}")
    shard = next(lossy.glob("train-*.safetensors"))
    (tmp_path / "copy").mkdir()
    for p in lossy.iterdir():
        if p.is_file():
            (tmp_path / "copy" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "copy" / "tokenizer").mkdir()
    for p in (lossy / "tokenizer").iterdir():
        (tmp_path / "copy" / "tokenizer" / p.name).write_bytes(p.read_bytes())
    with open(tmp_path / "copy" / shard.name, "ab") as f:
        f.write(b"x")
    err = refusal(capsys, tmp_path, f"teacher_cache={tmp_path / 'copy'}")
    assert shard.name in err and "size" in err


def test_a_cache_dir_with_other_settings_is_not_overwritten(capsys, tmp_path):
    cache = build_cache(tmp_path / "c", "kind=sampled", "k=4")
    before = _shard_digests(cache)
    assert egad("cache", *SMOKE, f"out_dir={cache}", "kind=sampled", "k=6", f"hydra.run.dir={tmp_path / 'log'}") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "out_dir" in err and "k" in err and "nothing was changed" in err
    assert _shard_digests(cache) == before
    assert egad("cache", *SMOKE, f"out_dir={cache}", "kind=sampled", "k=4",
                f"hydra.run.dir={tmp_path / 'log'}") == 0  # complete
    assert "already complete" in capsys.readouterr().out


def test_the_default_location_is_keyed_by_the_settings(tmp_path, capsys):
    log = f"hydra.run.dir={tmp_path / 'log'}"
    assert egad("cache", *SMOKE, log) == 0
    first = capsys.readouterr().out
    assert egad("cache", *SMOKE, "state_quant=int8", log) == 0
    second = capsys.readouterr().out
    dirs = sorted((Path(os.environ["EGAD_CACHE_DIR"]) / "teacher-cache").iterdir())
    assert len(dirs) == 2 and all((d / "manifest.json").is_file() for d in dirs)
    assert egad("cache", *SMOKE, log) == 0
    assert "already complete" in capsys.readouterr().out
    assert first != second


def test_inspect_entropy_reads_the_entropies_from_the_cache(tmp_path, lossless, monkeypatch):
    """The same histogram and quantiles as the live teacher pass, with no model loaded."""
    # debug=smoke's teacher and data, without its student (inspect-entropy's default has none)
    small = ("max_tokens=512", "progress=false", f"hydra.run.dir={tmp_path / 'log'}")
    assert egad("inspect-entropy", "teacher=random", "dataset.block_size=32", "dataset.max_train_tokens=8192",
                "dataset.max_val_tokens=1024", *small, f"out_dir={tmp_path / 'live'}") == 0
    from egad_cli.models import loading

    def no_teacher(*args, **kwargs):
        raise AssertionError("inspect-entropy from a teacher cache loaded the teacher")

    monkeypatch.setattr(loading, "load_teacher", no_teacher)
    assert egad("inspect-entropy", *small, f"teacher_cache={lossless}",
                f"out_dir={tmp_path / 'cached'}") == 0
    live = json.loads((tmp_path / "live" / "entropy.json").read_text())
    cached = json.loads((tmp_path / "cached" / "entropy.json").read_text())
    assert cached["n_tokens"] == live["n_tokens"] and cached["histogram"]["teacher"] == live["histogram"]["teacher"]
    for key, value in live["quantiles"]["teacher"].items():
        assert cached["quantiles"]["teacher"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert cached["setup"]["teacher_cache"] == str(lossless)


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(), reason="needs torchrun")
def test_two_ranks_write_the_same_cache_as_one(tmp_path):
    """Under torchrun each rank writes its own shards; the result is byte for byte the one-process cache."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, EGAD_CACHE_DIR=str(tmp_path / "egad-cache"))
    common = ["cache", *SMOKE, f"hydra.run.dir={tmp_path / 'log'}"]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port), "-m", "egad_cli",
                          *common, f"out_dir={tmp_path / 'two'}"], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    one = build_cache(tmp_path / "one")
    assert _shard_digests(tmp_path / "two") == _shard_digests(one) and len(_shard_digests(one)) > 2
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "two", one)]
    assert manifests[0]["splits"] == manifests[1]["splits"]


def test_a_run_from_a_cache_resumes_from_the_same_cache(tmp_path, lossy, capsys):
    run = tmp_path / "run"
    assert distill(run, "method=kd", f"teacher_cache={lossy}") == 0
    # the command egad prints for a resume: no teacher_cache on it, and still no live teacher
    resumed = tmp_path / "resumed"
    assert egad("distill", f"trainer.resume={run}", "trainer.max_steps=6", f"hydra.run.dir={resumed}") == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["teacher_cache"] == str(lossy)
    assert sorted(losses_by_step(resumed)) == [1, 2, 3, 4, 5, 6]
    capsys.readouterr()
    assert egad("distill", f"trainer.resume={run}", "trainer.max_steps=8", f"teacher_cache={tmp_path}",
                f"hydra.run.dir={tmp_path / 'refused'}") == 2
    assert "teacher_cache" in capsys.readouterr().err


def test_the_default_cache_serves_the_default_distill(tmp_path, capsys):
    """`egad cache` with no arguments, then `egad distill teacher_cache=DIR` with no arguments (method egad:
    the dual branch reads the stored states); the cache prints what the states cost, the run its held-out
    KL, exact (no error bar), from the stored states."""
    assert egad("cache", *SMOKE, f"hydra.run.dir={tmp_path / 'log'}") == 0
    out = " ".join(capsys.readouterr().out.split())
    root = Path(out.split("use it with: egad distill teacher_cache=")[1].split()[0])
    assert "of which" in out and "the final state (layer" in out and "the dual branch reads at layers" in out
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["kind"] == "exact" and manifest["format_version"] == 3 and manifest["layers"]
    assert distill(tmp_path / "run", f"teacher_cache={root}") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "egad" and "kl_after_se" not in summary
    out = " ".join(capsys.readouterr().out.split())
    assert f"{summary['kl_after']:.4f} nats/token (from the exact teacher cache" in out


def suggested_command(err: str) -> list[str]:
    """The `egad cache …` command a refusal suggests, as argv after `egad` (it is printed shell-quoted)."""
    import shlex

    line = err.split("egad cache", 1)[1]
    return ["cache", *shlex.split(line.split(" - ")[0].split("\n")[0])]


@pytest.mark.parametrize("case", ["entropy", "states", "temperature"])
def test_every_refusal_suggests_a_command_that_runs_as_printed(tmp_path, capsys, case):
    """The suggested command builds a new cache (not into the refused cache's out_dir, which holds other
    settings) and the refused run then trains from it."""
    built = {"entropy": "entropy_temps=[1.0]", "states": "state_pairs=0", "temperature": "exponents=[0.5,1.0,2.0]"}
    run = {"entropy": ("method=eakd",), "states": ("method=egad",), "temperature": ("method=kd", "temperature.base=4")}
    cache = build_cache(tmp_path / "c", "kind=sampled", built[case])
    capsys.readouterr()
    err = refusal(capsys, tmp_path, f"teacher_cache={cache}", *run[case])
    argv = suggested_command(err)
    assert not any(w.startswith("out_dir=") for w in argv), argv
    assert egad(*argv) == 0, argv
    out = " ".join(capsys.readouterr().out.split())
    new = out.split("use it with: egad distill teacher_cache=")[1].split()[0]
    assert Path(new) != cache
    assert distill(tmp_path / "ok", f"teacher_cache={new}", *run[case]) == 0


def test_a_divergence_without_a_per_entry_sum_reads_a_sampled_cache_bucketed(capsys, tmp_path, lossy, monkeypatch):
    """EOPD's gated loss has no unbiased estimate from draws (its gate reads the whole row); like the other
    losses that are not teacher-weighted it reads the stored ids and one bucket, as from a top-k cache."""
    from egad_cli.losses.sampled import TeacherSampled

    calls = []
    original = TeacherSampled.bucketed
    monkeypatch.setattr(TeacherSampled, "bucketed", lambda self: calls.append(1) or original(self))
    assert distill(tmp_path / "run", f"teacher_cache={lossy}", "method=kd", "loss=entropy_gated_kl") == 0
    assert calls and "one bucket" in capsys.readouterr().out
    assert all(math.isfinite(v) for v in losses_by_step(tmp_path / "run").values())


def test_a_topk_cache_of_format_1_is_read_as_before(tmp_path):
    """A cache written before the sampled kind existed (format_version 1, no "kind"): still read, as top-k."""
    from egad_cli.teacher_cache.integrity import sealed

    cache = build_cache(tmp_path / "c", "kind=topk", "k=8")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest.pop("kind")
    manifest.pop("manifest_sha256", None)
    manifest["format_version"] = 1
    (cache / "manifest.json").write_text(json.dumps(sealed(manifest), indent=2))
    assert distill(tmp_path / "run", "method=kd", f"teacher_cache={cache}") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kl_after"] > 0 and "kl_after_se" not in summary  # the bucketed value: no error bar
