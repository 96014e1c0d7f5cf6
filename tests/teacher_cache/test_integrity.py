"""A damaged teacher cache is refused before any value of it is used: every file against the SHA-256 its
manifest records (stamped by size and mtime so a sweep hashes once), the manifest against its own seal;
`egad cache verify DIR` reports each file; `egad cache` repairs the damaged shards it finds."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import egad

from egad_cli.teacher_cache import integrity

SMOKE = ("debug=smoke",)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A complete smoke cache with the dual branch's states in its train and val shards."""
    root = tmp_path_factory.mktemp("pristine")
    out = root / "cache"
    assert egad("cache", *SMOKE, "state_pairs=2", f"out_dir={out}", f"cache_dir={root / 'egad'}",
                f"hydra.run.dir={root / 'log'}") == 0
    return out


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    """A copy to damage (copy2 keeps mtimes, so the copy's stamp still vouches for the intact files)."""
    out = tmp_path / "cache"
    shutil.copytree(pristine, out, copy_function=shutil.copy2)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["command"] = manifest["command"].replace(str(pristine), str(out))  # what a user's copy would hold
    (out / "manifest.json").write_text(json.dumps(integrity.sealed(manifest)))
    return out


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def distill(run: Path, cache: Path) -> int:
    return egad("distill", *SMOKE, f"teacher_cache={cache}", f"hydra.run.dir={run}", "trainer.export=false")


@pytest.mark.parametrize("shard,damage", [
    ("train-00003.safetensors", "flip"),   # a train shard (with states.* of the dual branch)
    ("val-00001.safetensors", "flip"),     # a held-out shard
    ("train-00000.safetensors", "flip-header"),  # the JSON header: names, shapes, offsets
    ("train-00007.safetensors", "truncate"),
    ("val-00000.safetensors", "extend"),
    ("tokenizer/tokenizer.json", "flip"),
])
def test_a_damaged_file_is_refused_naming_it_and_nothing_is_written(cache, tmp_path, capsys, shard, damage):
    manifest = json.loads((cache / "manifest.json").read_text())
    path = cache / shard
    if path.suffix == ".safetensors":  # the shards hold the dual branch's states too
        header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
        assert any(name.startswith("states.") for name in header)
    expected = integrity.recorded_files(manifest)[shard]["sha256"]
    if damage == "flip":
        flip_byte(path)
    elif damage == "flip-header":
        flip_byte(path, where=20 / path.stat().st_size)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    else:
        path.write_bytes(path.read_bytes() + b"\0")
    run = tmp_path / "run"
    assert distill(run, cache) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and manifest["command"] in " ".join(err.split())
    if damage.startswith("flip"):
        assert integrity.file_sha256(path) in err  # the digest found, beside the one expected
    assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()


def test_the_printed_command_repairs_the_cache_to_the_same_bytes(cache, pristine, tmp_path, capsys):
    flip_byte(cache / "train-00003.safetensors")
    assert distill(tmp_path / "refused", cache) == 2
    command = " ".join(capsys.readouterr().err.split()).rsplit("are kept): ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["egad", "cache"]
    assert egad(*argv[1:], f"hydra.run.dir={tmp_path / 'log'}") == 0
    assert (cache / "train-00003.safetensors").read_bytes() == (pristine / "train-00003.safetensors").read_bytes()
    assert distill(tmp_path / "run", cache) == 0


def test_an_intact_cache_is_hashed_once_then_stamped(cache, tmp_path, monkeypatch):
    (cache / integrity.STAMP).unlink()
    hashed = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert distill(tmp_path / "first", cache) == 0
    files = integrity.recorded_files(json.loads((cache / "manifest.json").read_text()))
    assert sorted(hashed) == sorted(Path(f).name for f in files)  # every shard and tokenizer file, once
    hashed.clear()
    assert distill(tmp_path / "second", cache) == 0
    assert hashed == []  # unchanged since: the stamp vouches for them
    flip_byte(cache / "val-00000.safetensors")  # a later write changes the mtime: hashed again, and caught
    assert distill(tmp_path / "third", cache) == 2
    assert hashed == ["val-00000.safetensors"]


def test_a_manifest_edited_by_hand_is_refused(cache, tmp_path, capsys):
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = "0" * 64  # vouching for other bytes
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert distill(tmp_path / "run", cache) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "manifest.json was changed after egad wrote it" in err and "rm " in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_verify_command_prints_each_file_and_exits_by_the_result(cache, capsys):
    assert egad("cache", "verify", str(cache)) == 0
    out = capsys.readouterr().out
    assert "21 file(s) intact (sealed manifest)" in out and "ok train-00000.safetensors" in out
    flip_byte(cache / "train-00002.safetensors")
    assert egad("cache", "verify", str(cache)) == 2
    captured = capsys.readouterr()
    assert "DAMAGED train-00002.safetensors" in captured.out and "ok train-00001.safetensors" in captured.out
    assert "1 of 21 file(s)" in captured.err
    assert egad("cache", "verify", str(cache.parent / "nowhere")) == 2
    assert egad("cache", "verify") == 2 and "takes one directory" in capsys.readouterr().err


def test_a_cache_written_before_seals_still_has_its_shards_checked(cache, tmp_path, capsys):
    manifest = json.loads((cache / "manifest.json").read_text())
    for key in (integrity.SEAL, "tokenizer_files"):
        manifest.pop(key)
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert distill(tmp_path / "ok", cache) == 0
    flip_byte(cache / "train-00001.safetensors")
    assert distill(tmp_path / "bad", cache) == 2
    assert "train-00001.safetensors" in capsys.readouterr().err
