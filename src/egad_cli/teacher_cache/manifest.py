"""The teacher cache's directory layout and manifest (no torch: the config layer reads it).

A cache directory holds::

    plan.json                       what is being written (settings + fingerprints + the command); first
    tokenizer/                      the teacher's tokenizer (save_pretrained: JSON files)
    train-00000.safetensors …       one shard per `shard_blocks` blocks of a split, written atomically
    val-00000.safetensors …
    head.safetensors                kind=exact: the teacher's output head [V, D] the stored final states go through
    manifest.json                   written last, once every shard exists: the cache is complete; it records
                                    each file's size and SHA-256 and is sealed with its own (integrity.py)
    verified.json                   which files were found intact, by size and mtime (integrity.py)

A directory without manifest.json is an interrupted build: the same `egad cache` command continues it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from egad_cli.errors import UserError
from egad_cli.teacher_cache.integrity import manifest_problem

#: 3: the exact kind (final states + head); 2: the sampled kind (and the "kind" key); 1: the top-k format
#: before it. All still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
HEAD = "head.safetensors"
MANIFEST = "manifest.json"
PLAN = "plan.json"
TOKENIZER_DIR = "tokenizer"
#: the fields of a shard (per block b, predicting position t = 0 … L-2, kept entry j, exponent g, temperature e)
FIELDS = {
    "ids": "[B, L] int32 token ids of the block",
    "mask": "[B, L] bool: token t is a loss token",
    "topk_logp": "[B, L-1, k] log p(v) at T = 1 of the k most likely next tokens, descending",
    "topk_ids": "[B, L-1, k] their token ids (uint16 when V <= 65,536, else int32)",
    "log_tail": "[B, L-1, G] log Σ_{v not in top-k} p(v)^a for each exponent a = 1/τ of `exponents`",
    "entropy": "[B, L-1, E] exact full-vocabulary entropy (nats) at each temperature of `entropy_temps`",
    "sample_ids": "[B, L-1, draws] (kind sampled) unique ids drawn from the tail p(v)/S(1), v not in top-k; "
                  "padding slots after them (count 0)",
    "sample_counts": "[B, L-1, draws] uint8: how many of the `draws` draws gave each id (0: padding)",
    "sample_logp": "[B, L-1, draws] log p(v) at T = 1 of each drawn id",
    "states.<l>": "[B, L-1, D] teacher hidden states (output_hidden_states index l), for the dual branch; kind=exact: "
                  "l = final_layer is the state the output head reads (last_hidden_state)",
    "states.<l>.scale": "[B, L-1, 1] fp32 (state_quant=int8): states.<l> is int8, the state is states.<l> · scale",
}


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def n_shards(n_blocks: int, shard_blocks: int) -> int:
    return -(-n_blocks // shard_blocks)


def shard_of_rank(index: int, rank: int, world_size: int) -> bool:
    """Under torchrun each rank writes the i-th missing shard when i mod world_size == rank."""
    return index % world_size == rank


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{what}: {path} could not be read ({exc}); rebuild the cache with `egad cache`") from None


def open_manifest(ref: str | Path, key: str = "teacher_cache") -> tuple[Path, dict]:
    """(cache dir, its manifest) of a complete cache, or a UserError saying what is wrong and what to run."""
    root = Path(ref).expanduser()
    if not root.is_dir():
        raise UserError(f"{key}: {str(root)!r} is not a directory; build a teacher cache with `egad cache` "
                        f"(it prints the directory to pass here).")
    if not (root / MANIFEST).is_file():
        if (root / PLAN).is_file():
            plan = read_json(root / PLAN, key)
            done = len([p for p in root.glob("*.safetensors") if p.name != HEAD])
            raise UserError(f"{key}: {root} is an unfinished teacher cache ({done} shard(s) written, no {MANIFEST}); "
                            f"finish it by running the command that started it again: {plan.get('command', 'egad cache …')}")
        raise UserError(f"{key}: {root} is not a teacher cache (no {MANIFEST}); build one with `egad cache`.")
    manifest = read_json(root / MANIFEST, key)
    problem = manifest_problem(root, manifest)
    if problem:
        raise UserError(f"{key}: {problem}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise UserError(f"{key}: {root} was written in cache format {manifest.get('format_version')!r}; this egad "
                        f"reads formats {', '.join(map(str, READABLE_VERSIONS))}. Rebuild it: "
                        f"{manifest.get('command', 'egad cache …')}")
    return root, manifest


def tau_support(manifest: dict) -> tuple[float, float]:
    """The per-token temperatures the cache's tail grid covers: τ = 1/a, a in [min, max] of the exponents."""
    exps = manifest["exponents"]
    return 1.0 / max(exps), 1.0 / min(exps)


def cache_kind(manifest: dict) -> str:
    """exact | sampled | topk (format 1 caches are all top-k)."""
    return manifest.get("kind", "topk")


def describe_kind(plan: dict) -> str:
    """The format in a few words, from a plan or manifest (for `egad cache` and a run's start line)."""
    if plan.get("kind") == "exact":
        form = "int8 with a scale per token" if plan.get("state_quant") == "int8" else plan["dtype"]
        return f"exact: the teacher's final states ({form}) + its head"
    if plan.get("kind", "topk") == "sampled":
        at = f" at T={plan['draw_temperature']:g}" if plan.get("draw_temperature", 1.0) != 1.0 else ""
        return f"sampled: top {plan['k']} exact + {plan['draws']} draws from the tail{at}"
    return f"top-k: k={plan['k']} + tail bucket"


def rebuild_hint(manifest: dict, drop: tuple[str, ...] = (), **changes) -> str:
    """The cache's own command with `changes` (key=value) in place of its values: what would build a
    cache that fits, quoted for a shell. Its out_dir is left out: that directory holds the cache with the
    old settings, which `egad cache` would refuse to overwrite; without it the new cache goes to the
    directory keyed by its settings, which the command prints."""
    drop = {*drop, *changes, "out_dir", "+out_dir", "++out_dir"}  # drop: settings the new one must not carry
    words = [w for w in shlex.split(manifest.get("command", "egad cache")) if w.split("=")[0] not in drop]
    kind = manifest.get("kind", "topk")  # format 1 caches are top-k and say nothing
    if "kind" not in changes and kind != "exact" and not any(w.split("=")[0].lstrip("+") == "kind" for w in words):
        changes = {"kind": kind, **changes}  # built when a compact kind was the default: keep its kind
    return shlex.join(words + [f"{k}={hydra_value(v)}" for k, v in changes.items()])


def hydra_value(value) -> str:
    """A value as Hydra's override grammar writes it: lists as [a,b] (no spaces), floats short."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)
