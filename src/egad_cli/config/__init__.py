"""Config schemas, their registration with Hydra, and validation."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from egad_cli.config.commands import register_command_schemas  # noqa: F401
from egad_cli.config.schema import DistillConfig, Problems
from egad_cli.errors import UserError

__all__ = ["ConfigError", "DistillConfig", "conf_dir", "register_schemas", "validate"]


class ConfigError(UserError):
    """A config problem the user must fix; the message lists every problem found."""


def conf_dir() -> Path:
    """The YAML config tree: inside the package in a wheel, at the repo root in a checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "conf", here.parents[3] / "conf"):
        if (candidate / "distill.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"egad's conf/ directory was not found next to {here.parents[1]}; reinstall egad-cli")


def register_schemas() -> None:
    """Register the typed top-level schema that conf/*.yaml lists first in its defaults."""
    ConfigStore.instance().store(name="distill_schema", node=DistillConfig)


def validate(cfg: DictConfig, schema: type = DistillConfig):
    """Turn the composed config into typed dataclasses (`schema`: the command's top-level dataclass),
    or raise one error listing every problem."""
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, schema):  # composed without the schema (should not happen)
        raise ConfigError(f"config was not composed against {schema.__name__}")
    problems: Problems = typed.problems()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{len(problems)} config problem(s):\n{lines}\nFix them on the command line "
                          f"(key=value) or in the YAML file, then run again.")
    return typed
