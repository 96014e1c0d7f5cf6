"""The dispatcher and Hydra's own flags, driven through argv: --help, distill --help, --cfg job."""

from __future__ import annotations

import yaml
from conftest import egad

from egad_cli.cli import SUBCOMMANDS


def test_top_level_help_lists_subcommands(capsys):
    assert egad("--help") == 0
    out = capsys.readouterr().out
    for name in ("distill", "eval", "inspect-entropy", "report", "cache"):
        assert name in out
    assert set(SUBCOMMANDS) == {"distill", "eval", "inspect-entropy", "report", "cache"}


def test_no_arguments_prints_usage(capsys):
    assert egad() == 0
    assert "distill" in capsys.readouterr().out


def test_unknown_subcommand_exits_2_and_lists_commands(capsys):
    assert egad("distil") == 2
    err = capsys.readouterr().err
    assert "'distil'" in err and "distill" in err and "inspect-entropy" in err


def test_distill_help_shows_config_groups(capsys):
    assert egad("distill", "--help") == 0
    out = capsys.readouterr().out
    assert "Configuration groups" in out
    groups_section = out.split("Configuration groups", 1)[1].split("== Config ==", 1)[0]
    lines = {line.split(":")[0]: line for line in groups_section.splitlines() if ":" in line}
    expected = {
        "teacher": ("smollm2", "llama", "qwen", "hf", "gguf", "random"),
        "student": ("tiny", "small", "from_teacher", "hf"),
        "dataset": ("pystdlib", "text", "jsonl", "hf"),
        "method": ("egad", "kd", "rkl", "jsd", "skew_kl", "tvd", "eakd", "adakd", "ce"),
        "loss": ("forward_kl", "reverse_kl", "jsd", "skew_fkl", "skew_rkl", "tvd"),
        "curriculum": ("none", "linear", "cosine", "sqrt", "step"),
        "temperature": ("fixed", "entropy", "idts"),
        "branch": ("logits_only", "dual"),
        "difficulty": ("rank", "normalized", "running_quantile"),
        "weighting": ("uniform", "eakd", "adakd"),
        "debug": ("smoke",),
    }
    for group, choices in expected.items():
        assert group in lines, f"group {group} missing from --help"
        listed = {c.strip() for c in lines[group].split(":", 1)[1].split(",")}
        assert set(choices) <= listed, (group, listed)
    assert "egad distill" in out  # the app's own header, not Hydra's generic one


def _job_config(capsys) -> dict:
    out = capsys.readouterr().out
    return yaml.safe_load(out)


def test_cfg_job_prints_the_composed_config(capsys, tmp_path):
    assert egad("distill", "--cfg", "job", "method=kd", "trainer.lr=3e-4") == 0
    cfg = _job_config(capsys)
    assert set(cfg) >= {"teacher", "student", "dataset", "method", "loss", "curriculum", "temperature", "branch",
                        "trainer", "eval", "logging", "cache_dir", "run_dir"}
    assert cfg["method"]["name"] == "kd"
    assert cfg["loss"]["name"] == "forward_kl" and cfg["temperature"]["name"] == "fixed"
    assert cfg["trainer"]["lr"] == 3e-4
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


def test_cfg_job_group_override_beats_method_preset(capsys):
    assert egad("distill", "--cfg", "job", "method=kd", "loss=reverse_kl") == 0
    cfg = _job_config(capsys)
    assert cfg["loss"]["name"] == "reverse_kl" and cfg["method"]["name"] == "kd"


def test_every_command_help_lists_its_groups(capsys):
    for name, groups in (("eval", ("teacher", "student", "dataset", "debug")),
                         ("inspect-entropy", ("teacher", "method", "temperature", "weighting", "debug")),
                         ("report", ())):
        assert egad(name, "--help") == 0
        out = capsys.readouterr().out
        assert f"egad {name}" in out and "--cfg job" in out
        listed = {line.split(":")[0] for line in out.split("== Configuration groups ==")[1].splitlines() if ":" in line}
        assert set(groups) <= listed, (name, listed)
