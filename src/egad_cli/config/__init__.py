"""Config schemas, their registration with Hydra, and validation. Imports neither torch nor transformers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from egad_cli.config.commands import register_command_schemas
from egad_cli.config.policies import POLICY_REGISTRIES, registry_problems
from egad_cli.config.problems import Problems
from egad_cli.config.schema import DistillConfig
from egad_cli.errors import UserError

__all__ = ["ConfigError", "DistillConfig", "cache_dir", "conf_dir", "non_finite_problems", "register_schemas",
           "validate"]


class ConfigError(UserError):
    """A config problem the user must fix; the message lists every problem found."""

    @classmethod
    def listing(cls, problems: list[str]) -> ConfigError:
        lines = "\n".join(f"  - {p}" for p in problems)
        return cls(f"{len(problems)} config problem(s):\n{lines}\nFix them on the command line (key=value) or in "
                   f"the YAML file, then run again.")


def conf_dir() -> Path:
    """The YAML config tree: inside the package in a wheel, at the repo root in a checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "conf", here.parents[3] / "conf"):
        if (candidate / "distill.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"egad's conf/ directory was not found next to {here.parents[1]}; reinstall egad-cli")


def cache_dir(raw: str) -> Path:
    """The `cache_dir` setting as a path (dequantised teachers, tokenised corpora)."""
    return Path(raw).expanduser()


def register_schemas() -> None:
    """Register the typed top-level schemas and every option node of the policy groups."""
    cs = ConfigStore.instance()
    cs.store(name="distill_schema", node=DistillConfig)
    for registry in POLICY_REGISTRIES:
        registry.store(cs)
    register_command_schemas()


def non_finite_problems(node, key: str, out: Problems) -> None:
    """Every float field of every (nested) config dataclass is a finite number: inf and nan pass the
    range checks of `a > 0` style and would surface only as a non-finite loss mid-training."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        name = f"{key}.{f.name}" if key else f.name
        if dataclasses.is_dataclass(value):
            non_finite_problems(value, name, out)
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{name}: must be a finite number (got {value})")


def validate(cfg: DictConfig, schema: type = DistillConfig):
    """Turn the composed config into typed dataclasses (`schema`: the command's top-level dataclass),
    or raise one error listing every problem."""
    from egad_cli.config.override_hints import added_key_problems  # here: override_hints reads the registries
    from egad_cli.engine.host_memory import override_problem

    added = added_key_problems(cfg)  # before to_object, which drops them
    if added:
        raise ConfigError.listing(added)
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, schema):  # composed without the schema (should not happen)
        raise ConfigError(f"config was not composed against {schema.__name__}")
    problems = Problems()
    non_finite_problems(typed, "", problems)
    reported = {p.split(":")[0] for p in problems}  # one message per key: a nan also fails its range check
    checks = Problems()
    registry_problems(typed, checks)
    checks += typed.problems()
    problems += [p for p in checks if p.split(":")[0] not in reported]
    environment = override_problem()  # the one environment variable that must hold a valid value
    if environment:
        problems.append(environment)
    if problems:
        raise ConfigError.listing(problems)
    return typed
