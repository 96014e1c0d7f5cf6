"""egad's message for an override of a policy-group key that the chosen option does not have.

``egad distill method=egad_no_temperature temperature.kappa=0.5``: the preset chose ``temperature=fixed``,
whose dataclass has no ``kappa``. Hydra answers "Could not override 'temperature.kappa'. To append to your
config use +temperature.kappa=0.5", advice that does not help on a typed option: the ``+`` adds a key the
chosen option never reads. The registries know which option owns each field, so egad says that instead:
which option(s) of the group have the key, what the config has now, and the command line that works; for a
key no option has, the fields of each option.

Torch-free, like the rest of ``egad_cli.config``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields, is_dataclass

from omegaconf import DictConfig, OmegaConf

from egad_cli.config.policies import POLICY_REGISTRIES
from egad_cli.config.registry import Registry


def option_fields(registry: Registry, option: str) -> list[str]:
    """The fields one can set on ``<group>.<field>`` for that option (its key field, which names the
    option, is chosen with ``group=option`` instead)."""
    return [f.name for f in fields(registry[option]) if f.name != registry.key]


def policy_key_hint(full_key: str, object_type: object, override: str | None = None) -> str | None:
    """The message for ``full_key`` (``temperature.kappa``) missing from ``object_type`` (the chosen option's
    dataclass), or None when that is not a policy group's node. ``override`` is the command-line item
    (``temperature.kappa=0.5``), repeated in the suggested command line."""
    found = next(((r, name) for r in POLICY_REGISTRIES for name, cls in r.items() if cls is object_type), None)
    if found is None:
        return None
    registry, chosen = found
    group = registry.group
    if not full_key.startswith(f"{group}."):  # the node is not where `group=option` puts it: nothing to advise
        return None
    field = full_key[len(group) + 1:].split(".")[0]
    item = override or f"{group}.{field}=…"
    by_option = {name: option_fields(registry, name) for name in registry}
    owners = [name for name, names in by_option.items() if field in names]
    if owners:
        listed = ", ".join(f"{group}={name}" for name in owners)
        which = "it" if len(owners) == 1 else "one"
        return (f"{group}.{field}: this config has {group}={chosen}, which has no field {field}; {field} belongs to "
                f"{listed}: choose {which} on the command line ({group}={owners[0]} {item}); adding {field} with a "
                f"+ would not help ({group}={chosen} would ignore it)")
    lines = [f"{group}.{field}: no option of {group} has a field {field} (this config has {group}={chosen})."]
    near = difflib.get_close_matches(field, sorted({n for names in by_option.values() for n in names}), n=3)
    if near:
        lines.append("Did you mean " + " or ".join(
            f"{n} ({', '.join(f'{group}={o}' for o, names in by_option.items() if n in names)})" for n in near) + "?")
    lines.append(f"The fields of each option of {group} (choose one with {group}=<option>):")
    lines += [f"  {name}: {', '.join(names) or '(none)'}" for name, names in by_option.items()]
    return "\n".join(lines)


def policy_key_error(ex: BaseException) -> Exception | None:
    """Hydra's "Could not override" error about a policy-group key, as the same exception type carrying
    egad's message; None for any other error, or when Hydra's or OmegaConf's exceptions are not shaped as
    expected (the caller then keeps Hydra's own message)."""
    try:
        from hydra.errors import ConfigCompositionException
        from omegaconf.errors import ConfigAttributeError, ConfigKeyError

        cause = ex.__cause__
        if not isinstance(ex, ConfigCompositionException) or not isinstance(cause, (ConfigAttributeError,
                                                                                    ConfigKeyError)):
            return None
        full_key, object_type = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
        if not isinstance(full_key, str) or object_type is None:
            return None
        # Hydra's message ends with "To append to your config use +<the command-line item>"
        given = re.search(r"use \+(\S.*)$", str(ex), re.MULTILINE)
        message = policy_key_hint(full_key, object_type, given.group(1).strip() if given else None)
        return None if message is None else ConfigCompositionException(message)
    except Exception:  # noqa: BLE001 - a hint must never hide the error it explains
        return None


def added_key_problems(cfg: DictConfig) -> list[str]:
    """Keys a ``+temperature.kappa=…`` added to a policy option that has no such field: OmegaConf keeps them and
    the option never reads them, so the run would silently ignore the value. One problem per key, worded as the
    override error's (which option owns it)."""
    out = []
    for registry in POLICY_REGISTRIES:
        node = cfg.get(registry.group) if registry.group in cfg else None
        cls = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if not is_dataclass(cls):
            continue
        known = {f.name for f in fields(cls)}
        for key in node:
            if key not in known:
                out.append(policy_key_hint(f"{registry.group}.{key}", cls) or
                           f"{registry.group}.{key}: {registry.group}={node.get(registry.key)} has no such field")
    return out
