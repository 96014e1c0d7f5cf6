"""Registries: the one list of choices of each policy config group.

A registry maps an option name (``temperature=entropy``) to the dataclass of that option's
config node. It is the only place a choice is listed: Hydra's ConfigStore is filled from it
(so ``--help``, ``egad distill temperature=nope``'s error and composition read it), ``validate()``
reads it, and each dataclass builds its policy object (``build``), so nothing dispatches on names.

Torch-free on purpose: composing and validating a config must not import torch (DESIGN §5).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, fields
from typing import Any

from hydra.core.config_store import ConfigStore


class Registry:
    """Option name -> config dataclass, for one config group.

    ``key`` is the field of the node that records the chosen option (``name`` for most groups,
    ``schedule`` for the curriculum); each dataclass's default for that field is its option name.
    """

    def __init__(self, group: str, what: str, key: str = "name") -> None:
        self.group, self.what, self.key = group, what, key
        self._options: dict[str, type] = {}

    def option(self, cls: type) -> type:
        """Class decorator: register ``cls`` under the default of its ``key`` field."""
        default = next((f.default for f in fields(cls) if f.name == self.key), MISSING)
        if not isinstance(default, str):
            raise TypeError(f"{cls.__name__} needs a string default for {self.key!r} to be registered")
        if default in self._options:
            raise ValueError(f"{self.what} {default!r} is registered twice")
        self._options[default] = cls
        return cls

    def names(self) -> list[str]:
        return list(self._options)

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __contains__(self, name: object) -> bool:
        return name in self._options

    def __getitem__(self, name: str) -> type:
        try:
            return self._options[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; valid choices: {', '.join(self._options)}") from None

    def items(self):
        return self._options.items()

    def store(self, cs: ConfigStore) -> None:
        """Each option as a Hydra config node of the group (``group=name`` on the command line)."""
        for name, cls in self._options.items():
            cs.store(group=self.group, name=name, node=cls)

    def name_problem(self, node: Any) -> str | None:
        """A node whose key field was edited (``loss.name=tvd`` on a forward_kl node) no longer matches
        its type: the option must be chosen with ``group=name``, which also brings its fields."""
        chosen = getattr(node, self.key)
        registered = next((n for n, c in self._options.items() if type(node) is c), None)
        if chosen == registered:
            return None
        if chosen in self._options:
            return (f"{self.group}.{self.key}: choose the {self.what} with {self.group}={chosen} (setting "
                    f"{self.group}.{self.key} alone does not bring that option's fields)")
        return f"{self.group}.{self.key}: got {chosen!r}; valid choices are {', '.join(self._options)}"
