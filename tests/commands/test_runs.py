"""A run dir's saved config feeds the analysis commands: its policy groups come back as their own option
nodes (idts, adakd, …), whatever the command composed by default; command-line keys still win."""

from __future__ import annotations

import pytest
from conftest import compose_distill
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from egad_cli.commands.inspect_entropy import RUN_GROUPS
from egad_cli.commands.runs import with_run_dir
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import InspectEntropyConfig
from egad_cli.config.policies import AdaKDWeightingConfig, IDTSTemperatureConfig
from egad_cli.errors import UserError


def inspect_config(overrides):
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="inspect_entropy", overrides=[*overrides, "output_dir=unused"])
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def adakd_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(compose_distill(["method=adakd", "weighting.r0=0.5", "temperature.c=0.7"]), run / "config.yaml")
    return run


def test_policy_groups_come_back_as_the_runs_options(adakd_run):
    raw = inspect_config([f"run_dir={adakd_run}"])  # composes egad's entropy temperature by default
    typed = validate(with_run_dir(raw, adakd_run, RUN_GROUPS, [f"run_dir={adakd_run}"]), InspectEntropyConfig)
    assert isinstance(typed.temperature, IDTSTemperatureConfig) and typed.temperature.c == 0.7
    assert isinstance(typed.weighting, AdaKDWeightingConfig) and typed.weighting.r0 == 0.5
    assert typed.method.name == "adakd" and typed.curriculum.schedule == "none"


def test_a_key_on_the_command_line_wins_over_the_run(adakd_run):
    overrides = [f"run_dir={adakd_run}", "temperature.base=2"]
    typed = validate(with_run_dir(inspect_config(overrides), adakd_run, RUN_GROUPS, overrides), InspectEntropyConfig)
    assert isinstance(typed.temperature, IDTSTemperatureConfig)
    assert (typed.temperature.base, typed.temperature.c) == (2.0, 0.7)


def test_a_run_config_of_another_schema_is_a_clear_error(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text("temperature:\n  name: no_such_policy\n")
    with pytest.raises(UserError, match="does not fit this version"):
        with_run_dir(inspect_config([]), run, RUN_GROUPS, [])
