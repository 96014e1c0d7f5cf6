"""Cache deviation for `egad report`: runs trained from a teacher cache against their live twins.

A sweep (or a folder of runs) that holds runs trained from a teacher cache and the same runs trained live
says how far the cache moved the answer. A cached run's *live twin* is a run without a teacher cache whose
resolved config (the run dir's ``config.yaml``: method, student, trainer, seed, and the teacher and dataset
the cache was built from) equals the cached run's in every key that shapes training, all but ``NOT_TRAINING``
(where files go, logging, checkpoint cadence, the distill-time eval settings but the held-out
tokens ``kl_after`` averages over). A cached run reads its
teacher and dataset from the cache, so the twin is the live run of the same teacher on the same data, as
spelled (``dataset.paths`` compared as written).

Per group of pairs (the same cache and the same settings but the seed): the metric live and from the
cache, their mean difference cache − live paired by seed with its 95 % t interval (``egad_cli.stats``)
and relative to live. ``kl_after`` of a cached run is measured from the cache (exact for ``kind=exact``, an
estimate or a bucketed bound for the compact kinds); ``eval.kl_forward`` (after ``egad eval``, which always
runs the live teacher) compares like with like.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from egad_cli.commands.sweep import SEED_KEY, Run, mean_sd
from egad_cli.stats import paired_difference

#: keys of a run's config that do not change what it trains (dotted; a key removes its whole subtree)
NOT_TRAINING = ("teacher_cache", "run_dir", "cache_dir", "logging", "trainer.resume", "trainer.log_every",
                "trainer.ckpt_every", "trainer.keep_ckpts", "trainer.export", "trainer.threads")
#: of the distill-time eval settings, the one that decides what kl_after averages over (the rest: when it runs,
#: generations)
EVAL_KEPT = ("max_tokens",)


def training_config(run: Run) -> tuple[dict, str | None] | None:
    """(the run's resolved config without NOT_TRAINING, its teacher_cache or None); None when unreadable."""
    path = run.path / "config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, OmegaConfBaseException):
        return None
    if not isinstance(config, dict):
        return None
    cache = config.get("teacher_cache")
    for dotted in NOT_TRAINING:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    if isinstance(config.get("eval"), dict):
        config["eval"] = {k: v for k, v in config["eval"].items() if k in EVAL_KEPT}
    return config, (str(cache) if cache else None)


def _key(config: dict, drop_seed: bool = False) -> str:
    if drop_seed:
        config = {**config, "trainer": {k: v for k, v in config.get("trainer", {}).items() if k != "seed"}}
    return json.dumps(config, sort_keys=True, default=str)


def cache_kind(cache: str) -> str:
    """The cache's kind from its manifest ('exact', 'sampled', 'topk'), '?' when it cannot be read."""
    try:
        manifest = json.loads((Path(cache).expanduser() / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "?"
    return str(manifest.get("kind", "topk"))  # format 1 caches have no kind: they are top-k


@dataclass
class TwinGroup:
    label: str  #: the cached runs' overrides other than the seed and the cache
    cache: str
    cached: dict[str, float] = field(default_factory=dict)  #: seed -> metric of the run from the cache
    live: dict[str, float] = field(default_factory=dict)  #: seed -> metric of its live twin


def _number(run: Run, metric: str) -> float | None:
    value = run.metrics.get(metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def twin_groups(runs: list[Run], metric: str) -> list[TwinGroup]:
    """Every finished cached run with a finished live twin that both have `metric`, grouped over seeds."""
    live: dict[str, Run] = {}
    cached: list[tuple[Run, dict, str]] = []
    for run in runs:
        if run.status != "done" or _number(run, metric) is None:
            continue
        read = training_config(run)
        if read is None:
            continue
        config, cache = read
        if cache is None:
            live.setdefault(_key(config), run)
        else:
            cached.append((run, config, cache))
    groups: dict[tuple[str, str], TwinGroup] = {}
    for run, config, cache in cached:
        twin = live.get(_key(config))
        if twin is None:
            continue
        label = " ".join(f"{k}={v}" for k, v in run.overrides.items() if k not in (SEED_KEY, "teacher_cache"))
        group = groups.setdefault((_key(config, drop_seed=True), cache), TwinGroup(label or "(all runs)", cache))
        seed = str(config.get("trainer", {}).get("seed"))
        if seed not in group.cached:  # the same seed twice (runs linked in from two sweeps): the first pair
            group.cached[seed], group.live[seed] = _number(run, metric), _number(twin, metric)
    return list(groups.values())


def cache_deviation(runs: list[Run], metric: str) -> tuple[list[str], list[list]] | None:
    """(columns, rows) of the cache-deviation table, one row per group of pairs; None when no cached run
    of the sweep has a live twin."""
    groups = twin_groups(runs, metric)
    if not groups:
        return None
    columns = ["runs", "cache", "seeds", f"{metric} live", f"{metric} from cache", "cache − live (paired, 95 % t)",
               "relative"]
    rows = []
    for g in groups:
        diff = paired_difference(g.cached, g.live)
        live_mean, _ = mean_sd(list(g.live.values()))
        cache_mean, _ = mean_sd(list(g.cached.values()))
        relative = f"{100 * diff.mean / live_mean:+.2f} %" if live_mean else "—"
        rows.append([g.label, f"{Path(g.cache).name} ({cache_kind(g.cache)})", diff.n, f"{live_mean:.4f}",
                     f"{cache_mean:.4f}", diff.text(), relative])
    return columns, rows
