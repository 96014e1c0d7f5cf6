"""Which runs are a cached run's live twins (``egad_cli.commands.cache_twins``), on run dirs written by hand:
the resolved config decides, less the keys that do not change what a run trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from egad_cli.commands.cache_twins import cache_deviation, twin_groups
from egad_cli.commands.sweep import read_run

BASE = {"teacher": {"name": "smollm2"}, "dataset": {"name": "pystdlib", "max_train_tokens": 76800},
        "method": {"name": "kd"}, "trainer": {"lr": 0.002, "seed": 0, "log_every": 10},
        "eval": {"max_tokens": 8192, "before": True},
        "teacher_cache": None, "run_dir": "x"}


def run_dir(root: Path, name: str, metric: float, cache: Path | None = None, eval: dict | None = None,
            **trainer) -> Path:
    path = root / name
    (path / ".hydra").mkdir(parents=True)
    config = json.loads(json.dumps(BASE))
    config["trainer"].update(trainer)
    config["eval"].update(eval or {})
    config["teacher_cache"] = str(cache) if cache else None
    config["run_dir"] = str(path)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "summary.json").write_text(json.dumps({"kl_after": metric}))
    overrides = ["method=kd", f"trainer.seed={config['trainer']['seed']}"] + ([f"teacher_cache={cache}"] if cache else [])
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    path = tmp_path / "cache-x"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"kind": "sampled"}))
    return path


def runs(root: Path):
    return [read_run(p, root) for p in sorted(root.iterdir())]


def test_twins_pair_by_config_and_seed(tmp_path, cache):
    run_dir(tmp_path, "live0", 3.0, seed=0)
    run_dir(tmp_path, "live1", 3.2, seed=1, log_every=1, eval={"before": False})  # cadence: still a twin
    run_dir(tmp_path, "cache0", 3.3, cache, seed=0)
    run_dir(tmp_path, "cache1", 3.4, cache, seed=1)
    [group] = twin_groups(runs(tmp_path), "kl_after")
    assert group.live == {"0": 3.0, "1": 3.2} and group.cached == {"0": 3.3, "1": 3.4}
    columns, [row] = cache_deviation(runs(tmp_path), "kl_after")
    assert columns[0] == "runs" and row[1] == "cache-x (sampled)" and row[2] == 2
    assert row[5].startswith("+0.2500 [") and row[6] == f"{100 * 0.25 / 3.1:+.2f} %"


def test_a_run_that_trains_otherwise_is_no_twin(tmp_path, cache):
    run_dir(tmp_path, "live0", 3.0, seed=0, lr=0.01)           # another lr
    run_dir(tmp_path, "live1", 3.0, seed=1)                     # another seed
    run_dir(tmp_path, "live2", 3.0, seed=0, eval={"max_tokens": 1024})  # kl_after over other held-out tokens
    run_dir(tmp_path, "cache0", 3.3, cache, seed=0)
    assert twin_groups(runs(tmp_path), "kl_after") == [] and cache_deviation(runs(tmp_path), "kl_after") is None
