"""Layering: library code never imports commands/; composing and validating a config imports no torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import egad_cli

PACKAGE = Path(egad_cli.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module)
    return names


def test_only_commands_and_the_cli_import_commands():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel == Path("cli.py"):
            continue
        bad = sorted(m for m in imported_modules(path) if m == "egad_cli.commands" or m.startswith("egad_cli.commands."))
        if bad:
            offenders[str(rel)] = bad
    assert not offenders, f"library modules import commands/: {offenders}"


def test_the_import_graph_walk_sees_imports():
    """The check above would pass vacuously if the walk found nothing: it must see these."""
    assert "egad_cli.commands.common" in imported_modules(PACKAGE / "commands" / "distill.py")
    assert "egad_cli.policies.base" in imported_modules(PACKAGE / "policies" / "weighting.py")  # relative import


def test_config_and_its_registries_import_no_torch():
    code = ("import sys; import egad_cli.config, egad_cli.config.policies; "
            "from egad_cli.config import register_schemas; register_schemas(); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["distill", "trainer.lr=-1"],
    ["distill", "--cfg", "job"],
    ["distill", "--help"],
    ["eval", "eval.batch_size=0", "student.path=/nowhere"],
    ["inspect-entropy", "bins=1"],
    ["report", "order=sideways"],
])
def test_config_errors_and_cfg_job_answer_without_importing_torch(tmp_path, argv):
    """A typo must answer in about a second: the subcommands import torch only after validation."""
    code = ("import sys\nfrom egad_cli.cli import main\n"
            f"try:\n    main({[*argv, f'hydra.run.dir={tmp_path}'] if not {'--cfg', '--help'} & set(argv) else argv!r})\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if not {"--cfg", "--help"} & set(argv):
        assert "config problem" in proc.stderr


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_distributed_strategy_without_torchrun_is_refused_without_importing_torch(tmp_path, strategy):
    """How the process was launched needs no model: refused as fast as a config error, nothing written."""
    code = ("import sys\nfrom egad_cli.cli import main\n"
            f"try:\n    main(['distill', 'debug=smoke', 'trainer.strategy={strategy}', 'hydra.run.dir={tmp_path / 'run'}'])\n"
            "except SystemExit as exc:\n    assert exc.code == 2, exc.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "SUBMITIT_EXECUTOR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"trainer.strategy={strategy} needs torchrun" in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()
