"""Distill run directories as inputs of the analysis commands.

``<run_dir>/config.yaml`` is the run's fully resolved config and ``<run_dir>/student/`` its
exported student. ``with_run_dir`` rebuilds a command's config from them: the listed groups
come from the run, except what the user set on the command line, which always wins.
"""

from __future__ import annotations

import glob
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from egad_cli.config.policies import POLICY_REGISTRIES
from egad_cli.errors import UserError

RUN_CONFIG = "config.yaml"
POLICY_GROUPS = {r.group: r for r in POLICY_REGISTRIES}
TRUST_KEYS = ("teacher.trust_remote_code", "student.trust_remote_code")
STUDENT_DIR = "student"


def task_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def overridden(overrides: list[str]) -> tuple[set[str], set[str]]:
    """(groups chosen on the command line, dotted keys set on the command line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups, keys = set(), set()
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_delete():
            continue
        key = o.key_or_group
        (keys if "." in key else groups).add(key)
    return groups, keys


def sets_group(overrides: list[str], group: str) -> bool:
    """Whether the command line chooses `group` or sets one of its keys."""
    chosen, keys = overridden(overrides)
    return group in chosen or any(k.startswith(group + ".") for k in keys)


def has_student(run_dir: Path) -> bool:
    return (run_dir / STUDENT_DIR / "config.json").is_file()


def expand_run_dir(ref: str) -> Path:
    """run_dir as a Path; a glob pattern must match exactly one directory.

    Multirun job dirs are named like ``0_method=kd``, and Hydra's override grammar does not take an
    unquoted '=', so ``run_dir=multirun/…/0_*`` (or ``0_method\\=kd``) is the easy way to name one.
    """
    path = Path(ref).expanduser()
    if path.exists() or not any(ch in ref for ch in "*?["):
        return path
    matches = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_dir())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"run_dir: {ref!r} matches no directory")
    listed = "\n  ".join(str(m) for m in matches[:10])
    raise UserError(f"run_dir: {ref!r} matches {len(matches)} directories; name one, or evaluate them all "
                    f"with `egad eval -m run_dir=…,…`:\n  {listed}")


def check_run_dir(ref: str, need_student: bool) -> Path:
    """The run dir as a Path, or a UserError that says what is missing and what to do."""
    path = expand_run_dir(ref)
    if not path.is_dir():
        raise UserError(f"run_dir: {str(path)!r} does not exist; pass the directory of an `egad distill` run "
                        f"(it holds config.yaml, summary.json and student/).")
    if not (path / RUN_CONFIG).is_file():
        hint = (" It looks like a multirun sweep dir: name one of its job dirs, or run `egad report "
                f"sweep_dir={path}`." if (path / "multirun.yaml").is_file() else "")
        raise UserError(f"run_dir: {str(path)!r} has no {RUN_CONFIG}; it is not an egad distill run "
                        f"dir.{hint}")
    if need_student and not has_student(path):
        from egad_cli.engine.checkpoint import list_checkpoints  # here, not at the top: it imports torch

        ckpts = list_checkpoints(path / "checkpoints")
        hint = (f" Its latest checkpoint is {ckpts[-1].name}: finish the run with `egad distill "
                f"trainer.resume={path}` (it takes the run's own config)." if ckpts else "")
        raise UserError(f"run_dir: {str(path)!r} has no exported student ({STUDENT_DIR}/ with config.json): "
                        f"the run did not finish, or it ran with trainer.export=false.{hint} "
                        f"To evaluate another model, set student.path=<a transformers model dir>.")
    return path


def with_run_dir(raw: DictConfig, run_dir: Path, groups: tuple[str, ...], overrides: list[str],
                 student: bool = True) -> DictConfig:
    """The composed config with `groups` taken from the run's config.yaml and the student from
    run_dir/student (when `student` and the run exported one), except the groups and keys the
    user set on the command line (``overrides``), which keep their composed values."""
    run_cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    chosen, keys = overridden(overrides)
    patch = OmegaConf.create({})
    replace = {}  # policy groups: the run's option is another node type, so it replaces the composed node
    try:
        for group in groups:
            if group in chosen or group not in run_cfg:
                continue
            own_keys = [k for k in keys if k.startswith(group + ".")]
            if group in POLICY_GROUPS:
                registry = POLICY_GROUPS[group]
                node = OmegaConf.merge(OmegaConf.structured(registry[run_cfg[group][registry.key]]), run_cfg[group])
                for key in own_keys:
                    OmegaConf.update(node, key[len(group) + 1:], OmegaConf.select(raw, key), merge=False)
                replace[group] = node
                continue
            patch[group] = run_cfg[group]
            for key in own_keys:
                OmegaConf.update(patch, key, OmegaConf.select(raw, key), merge=False)
        if student and not sets_group(overrides, "student") and has_student(run_dir):
            # tokenizer: null: the exported student ships its own (a cross-tokenizer run's included)
            patch["student"] = {"name": "run", "init": "hf", "path": str(run_dir / STUDENT_DIR), "revision": None,
                                "tokenizer": None}
        merged = OmegaConf.merge(raw, patch)
        for group, node in replace.items():
            merged[group] = node
        # Running a model's own code is the choice of the person at the command line, never of a file
        # they received: trust_remote_code keeps its composed (command-line or default false) value.
        for key in TRUST_KEYS:
            if OmegaConf.select(merged, key) is not None:
                OmegaConf.update(merged, key, OmegaConf.select(raw, key, default=False), merge=False)
        return merged
    except (OmegaConfBaseException, KeyError) as exc:
        raise UserError(f"run_dir: {run_dir / RUN_CONFIG} does not fit this version of egad's config schema "
                        f"({exc}); override the teacher/dataset groups explicitly instead.") from None


#: what a teacher cache fixes: a run from it uses the cache's teacher and data
CACHE_GROUPS = ("teacher", "dataset")


def check_run_fits_cache(raw: DictConfig, run_dir: Path) -> None:
    """A run evaluated against a teacher cache (``egad eval run_dir=… teacher_cache=…``) must have been trained on
    the cache's teacher and data (raw: composed from the run's config.yaml): otherwise its metrics would be
    against another teacher, or on another corpus's held-out split. Compared key by key over what the manifest
    records (how to run the teacher, trust_remote_code and dtype, aside, and for split=val the training
    budget dataset.max_train_tokens, which leaves the held-out split as it is)."""
    from egad_cli.teacher_cache.manifest import open_manifest

    root, manifest = open_manifest(raw.teacher_cache)
    # how to run the teacher does not change it; the training budget only trims the train split
    aside = {"trust_remote_code", "dtype"} | ({"max_train_tokens"} if raw.get("split") == "val" else set())
    differ = []
    for group in CACHE_GROUPS:
        mine = OmegaConf.to_container(raw[group], resolve=True) if raw.get(group) is not None else {}
        for key, there in manifest[group].items():
            if key not in aside and mine.get(key) != there:
                differ.append(f"{group}.{key}={mine.get(key)!r} (the cache has {there!r})")
    if differ:
        raise UserError(f"teacher_cache: {root} was built from another teacher or dataset than the run {run_dir} "
                        f"was trained on: {'; '.join(differ)}. Evaluate it against its own teacher (drop "
                        f"teacher_cache), or pass the cache it was trained from")


def with_teacher_cache(raw: DictConfig, overrides: list[str]) -> DictConfig:
    """``teacher_cache=DIR``: the teacher and dataset groups come from the cache's manifest (what it was
    built from). A value set on the command line must agree with the cache: another tokenizer, block
    size, dataset or teacher is refused by name, with the command that would build a fitting cache."""
    from egad_cli.teacher_cache.manifest import open_manifest, rebuild_hint

    root, manifest = open_manifest(raw.teacher_cache)
    chosen, keys = overridden(overrides)
    patch = {}
    differ, changes = [], {}
    for group in CACHE_GROUPS:
        cached = OmegaConf.create(manifest[group])
        mine = [k for k in keys if k.startswith(group + ".")] + ([group] if group in chosen else [])
        for key in mine:
            here = OmegaConf.select(raw, key)
            there = OmegaConf.select(cached, key[len(group) + 1:]) if "." in key else cached
            if isinstance(here, DictConfig):  # a group choice: compare what the cache was built from
                here, there = OmegaConf.to_container(here), OmegaConf.to_container(there)
                here = {k: v for k, v in here.items() if k not in ("trust_remote_code", "dtype")}
                there = {k: v for k, v in there.items() if k not in ("trust_remote_code", "dtype")}
            elif key in ("teacher.trust_remote_code", "teacher.dtype"):  # how to run a teacher that is not run
                continue
            if here != there:
                differ.append(f"{key}={here!r} (the cache has {there!r})" if "." in key else
                              f"{key}={raw[group].name} (the cache was built with {group}={manifest[group]['name']})")
                if "." in key:
                    changes[key] = here
        keep = OmegaConf.create(manifest[group])
        keep_trust = OmegaConf.select(raw, f"{group}.trust_remote_code")
        if keep_trust is not None:  # never taken from a file (see with_run_dir)
            keep.trust_remote_code = keep_trust
        patch[group] = keep
    if differ:
        raise UserError(f"teacher_cache: {root} was built from another teacher or dataset than this command asks "
                        f"for: {'; '.join(differ)}. Drop those overrides to train from this cache, or build a "
                        f"cache for them: {rebuild_hint(manifest, **changes)}")
    try:
        return OmegaConf.merge(raw, patch)
    except OmegaConfBaseException as exc:
        raise UserError(f"teacher_cache: {root}/manifest.json does not fit this version of egad's config schema "
                        f"({exc}); rebuild the cache: {manifest.get('command', 'egad cache …')}") from None
