"""The work of `egad cache` once its config is valid: fingerprints, then the teacher pass, shard by shard."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist

from egad_cli.config import cache_dir
from egad_cli.config.commands import CacheCommandConfig
from egad_cli.config.schema import TrainerConfig
from egad_cli.data import build_splits, check_sources
from egad_cli.data.packing import vocabulary_fingerprint
from egad_cli.engine.runtime import Runtime, resolve_runtime
from egad_cli.errors import UserError, check_writable
from egad_cli.models import check_context, load_frozen_teacher, preflight_model_source
from egad_cli.models.loading import load_teacher_tokenizer
from egad_cli.models.setup import apply_document_masks
from egad_cli.models.vocab import check_head_rows
from egad_cli.teacher_cache import fidelity
from egad_cli.teacher_cache.build import (
    block_uniforms,
    teacher_fingerprint,
    teacher_head,
    teacher_rows,
    tensor_sha256,
)
from egad_cli.teacher_cache.integrity import check_files, describe, manifest_problem, record_files, sealed
from egad_cli.teacher_cache.manifest import (
    FORMAT_VERSION,
    HEAD,
    MANIFEST,
    PLAN,
    TOKENIZER_DIR,
    describe_kind,
    n_shards,
    read_json,
    shard_name,
    shard_of_rank,
)
from egad_cli.teacher_cache.shards import (
    is_complete_shard,
    remove_stale_temporaries,
    write_shard,
)
from egad_cli.ui.console import console

#: plan keys that decide the cache's contents (the directory key hashes them; a resume must match them)
CONTENT_KEYS = ("format_version", "teacher_fingerprint", "tokenizer_fingerprint", "data_fingerprints", "block_size",
                "k", "exponents", "entropy_temps", "layers", "dtype", "shard_blocks")
#: and for a sampled cache (format 2): what the draws depend on
SAMPLED_KEYS = ("kind", "draws", "seed", "draw_temperature")
#: and for an exact cache (format 3): the stored final layer and how its states are kept
EXACT_KEYS = ("kind", "final_layer", "state_quant")


def runtime_of(cfg: CacheCommandConfig) -> Runtime:
    strategy = "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"
    return resolve_runtime(TrainerConfig(device=cfg.device, precision=cfg.precision, strategy=strategy),
                           device_key="device", measures=True)


def barrier(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.barrier()


def make_plan(cfg: CacheCommandConfig, tokenizer, splits, vocab: int) -> dict:
    facts = teacher_facts(cfg)
    bad = [layer for layer in cfg.layers if layer > facts["num_hidden_layers"]]
    if bad:
        raise UserError(f"layers: the teacher has {facts['num_hidden_layers']} layers; {bad} do not exist "
                        f"(valid: 1..{facts['num_hidden_layers']})")
    if facts["max_position_embeddings"] and cfg.dataset.block_size > facts["max_position_embeddings"]:
        raise UserError(f"dataset.block_size: sequences of {cfg.dataset.block_size} tokens are longer than the "
                        f"teacher's max_position_embeddings={facts['max_position_embeddings']}; lower it")
    data = {name: {"n_blocks": len(part), "fingerprint": tensor_sha256(part.ids, part.mask)}
            for name, part in splits.items()}
    return {
        "format_version": FORMAT_VERSION,
        "egad_version": version("egad-cli"),
        "command": cfg.command,
        "teacher": asdict(cfg.teacher),
        "teacher_fingerprint": teacher_fingerprint(cfg.teacher, cache_dir(cfg.cache_dir)),
        "tokenizer_fingerprint": vocabulary_fingerprint(tokenizer),  # what the stored ids refer to
        "vocab_size": vocab,
        "teacher_facts": facts,
        "dataset": asdict(cfg.dataset),
        "data_fingerprints": {name: d["fingerprint"] for name, d in data.items()},
        "block_size": cfg.dataset.block_size,
        "kind": cfg.kind,
        "k": cfg.head_k(vocab),
        **({"draws": cfg.draws, "seed": cfg.seed, "draw_temperature": cfg.draw_temperature}
           if cfg.kind == "sampled" else {}),
        **({"final_layer": facts["num_hidden_layers"], "state_quant": cfg.state_quant, "head_file": HEAD}
           if cfg.kind == "exact" else {}),
        "exponents": [float(e) for e in cfg.exponents],
        "entropy_temps": sorted(float(t) for t in cfg.entropy_temps),
        "layers": stored_layers(cfg, facts),
        "dtype": cfg.dtype,
        "shard_blocks": cfg.shard_blocks,
        "document_masks": cfg.dataset.document_masks,
        "splits": {name: {"n_blocks": d["n_blocks"]} for name, d in data.items()},
    }


def stored_layers(cfg: CacheCommandConfig, facts: dict) -> list[int]:
    """The teacher hidden states to store: `layers`, plus those the dual branch maps to for `student` with
    branch.n_pairs = state_pairs, plus (kind=exact) the final one, the state the head reads."""
    layers = {int(layer) for layer in cfg.layers}
    if cfg.kind == "exact":
        layers.add(int(facts["num_hidden_layers"]))
    if cfg.state_pairs > 0:
        from egad_cli.losses.feature import default_layer_map
        from egad_cli.models.students import student_layer_count

        teacher_layers = facts["num_hidden_layers"]
        layers |= {lt for _, lt in default_layer_map(student_layer_count(cfg.student), teacher_layers,
                                                     cfg.state_pairs)}
    return sorted(layers)


def teacher_facts(cfg: CacheCommandConfig) -> dict:
    """What a run from the cache needs to know of the teacher, from its config alone (its weights load
    later, only if shards remain to be written)."""
    if cfg.teacher.source == "random":
        from egad_cli.models.tokenizers import byte_tokenizer

        arch = cfg.teacher.arch
        return {"num_hidden_layers": arch.num_layers, "hidden_size": arch.hidden_size,
                "vocab_rows": len(byte_tokenizer()), "max_position_embeddings": arch.max_position_embeddings}
    from transformers import AutoConfig

    from egad_cli.models.hub import resolve_model_ref
    from egad_cli.models.loading import gguf_path, load_gguf

    if cfg.teacher.source == "gguf":
        ref = str(load_gguf(gguf_path(cfg.teacher), cache_dir(cfg.cache_dir)))
    else:
        ref = resolve_model_ref(cfg.teacher.path, "teacher.path", cfg.teacher.revision, cfg.teacher.trust_remote_code)
    config = AutoConfig.from_pretrained(ref, revision=cfg.teacher.revision,
                                        trust_remote_code=cfg.teacher.trust_remote_code)
    return {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "vocab_rows": config.vocab_size, "max_position_embeddings": getattr(config, "max_position_embeddings", None)}


def content_keys(plan: dict) -> tuple[str, ...]:
    """What a cache's content depends on; document_masks only when on, so caches built before the option
    existed keep their keys."""
    return (CONTENT_KEYS + (SAMPLED_KEYS if plan.get("kind") == "sampled" else ())
            + (EXACT_KEYS if plan.get("kind") == "exact" else ())
            + (("document_masks",) if plan.get("document_masks") else ()))


def content_key(plan: dict) -> str:
    blob = json.dumps({k: plan[k] for k in content_keys(plan)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_root(cfg: CacheCommandConfig, plan: dict) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir).expanduser()
    return cache_dir(cfg.cache_dir) / "teacher-cache" / f"{cfg.teacher.name}-{content_key(plan)}"


def check_same_plan(root: Path, plan: dict) -> None:
    """An existing (partial or complete) cache in root must hold what this command would write."""
    for name in (MANIFEST, PLAN):
        if (root / name).is_file():
            old = read_json(root / name, "out_dir")
            differ = [k for k in dict.fromkeys(content_keys(plan) + content_keys(old)) if old.get(k) != plan.get(k)]
            if differ:
                raise UserError(f"out_dir: {root} already holds a teacher cache with other {', '.join(differ)} "
                                f"(built by: {old.get('command', '?')}); nothing was changed. Choose another "
                                f"out_dir, or remove that directory to rebuild it.")
            # not a content key (a cache is the same cache at either precision), but one cache must not mix them
            was = (old.get("teacher_precision") or {}).get("name")
            now = (plan.get("teacher_precision") or {}).get("name")
            if was and now and was != now:
                raise UserError(f"precision: {root} holds a teacher cache (or the start of one) whose teacher ran in "
                                f"{was}; this command would run it in {now}, and one cache must not mix the two. "
                                f"Nothing was changed. Add precision={was}, or choose another out_dir.")
            return


def bytes_per_token(manifest: dict) -> tuple[float, float]:
    """(bytes per predicting token of the whole cache's shards, of which the hidden states); the head file of
    an exact cache, stored once, is not per token."""
    tokens = sum(s["n_blocks"] * (manifest["block_size"] - 1) for s in manifest["splits"].values())
    total = sum(e["bytes"] for s in manifest["splits"].values() for e in s["shards"])
    width = manifest["teacher_facts"]["hidden_size"]
    per_layer = (width + 4 if manifest.get("state_quant") == "int8"  # int8 values + one fp32 scale
                 else width * getattr(torch, manifest["dtype"]).itemsize)
    return total / max(tokens, 1), float(len(manifest["layers"]) * per_layer)


def size_text(manifest: dict) -> str:
    """The cache's bytes per token, and what the hidden states take of them."""
    total, states = bytes_per_token(manifest)
    layers = list(manifest["layers"])
    if not states:
        return f"{total:.0f} bytes/token"
    per_layer = states / len(layers)
    if manifest.get("kind") == "exact":
        final = manifest["final_layer"]
        branch = [layer for layer in layers if layer != final]
        text = (f"{total:.0f} bytes/token, of which {per_layer:.0f} the final state (layer {final}: what the head "
                f"reads{', and the dual branch' if branch else ''})")
        if branch:
            text += (f" and {per_layer * len(branch):.0f} the states the dual branch reads at layers {branch} "
                     f"(state_pairs=0 leaves those out)")
        return text
    return (f"{total - states:.0f} bytes/token + {states:.0f} for the hidden states at layers {layers} "
            f"(state_pairs=0 leaves them out: no dual branch from this cache)")


def run(cfg: CacheCommandConfig) -> Path:
    started = time.perf_counter()
    runtime = runtime_of(cfg)
    preflight_model_source(cfg.teacher)
    check_sources(cfg.dataset)
    check_writable(cache_dir(cfg.cache_dir), "cache_dir")
    tokenizer = load_teacher_tokenizer(cfg.teacher, cache_dir(cfg.cache_dir), console if runtime.is_main else None)
    packed = build_splits(cfg.dataset, tokenizer, cache_dir(cfg.cache_dir))
    splits = {name: getattr(packed, name) for name in ("train", "val") if name in cfg.splits}
    vocab = len(tokenizer)
    plan = make_plan(cfg, tokenizer, splits, vocab)
    # what the teacher ran in (not a content key: a cache is the same cache at either precision)
    plan["teacher_precision"] = runtime.precision.as_dict()
    root = resolve_root(cfg, plan)
    check_writable(root, "out_dir")
    check_same_plan(root, plan)
    if (root / MANIFEST).is_file():
        if runtime.is_main:
            set_damaged_aside(root)
        barrier(runtime)
        if (root / MANIFEST).is_file():
            return root
    if runtime.is_main:
        write_json(root / PLAN, plan)
        if not (root / TOKENIZER_DIR / "tokenizer_config.json").is_file():
            tmp = root / f".{TOKENIZER_DIR}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(root / TOKENIZER_DIR, ignore_errors=True)
            tmp.replace(root / TOKENIZER_DIR)
        remove_stale_temporaries(root)
    barrier(runtime)

    # What is missing, then split among the ranks (all ranks list it before any writes: one more barrier),
    # so a resumed build shares the rest evenly whatever was written before.
    missing = [(name, i) for name, part in splits.items() for i in range(n_shards(len(part), cfg.shard_blocks))
               if not is_complete_shard(root / shard_name(name, i))]
    if plan["kind"] == "exact" and not is_complete_shard(root / HEAD, holds="weight"):
        missing.insert(0, (HEAD, 0))  # the output head, once: a work item like a shard
    barrier(runtime)
    todo = [item for j, item in enumerate(missing) if shard_of_rank(j, runtime.rank, runtime.world_size)]
    if runtime.is_main:
        every = [root / shard_name(n, i) for n, p in splits.items() for i in range(n_shards(len(p), cfg.shard_blocks))]
        written = sum(is_complete_shard(path) for path in every)
        console.rule(f"egad cache · teacher={cfg.teacher.name} · dataset={cfg.dataset.name} · {describe_kind(plan)}")
        console.print(f"{root}: {written} of {len(every)} shard(s) already written · teacher on {runtime.device} in "
                      f"{runtime.precision.describe()}"
                      + (f"; {runtime.world_size} ranks write the rest" if runtime.world_size > 1 else ""),
                      soft_wrap=True)
    measured = write_shards(cfg, plan, root, splits, todo, runtime, vocab) if todo else None
    barrier(runtime)
    if runtime.is_main:
        manifest = finish(root, plan, splits, measured)
        blocks = ", ".join(f"{n}: {s['n_blocks']} blocks" for n, s in manifest["splits"].items())
        console.print(f"teacher cache complete in {time.perf_counter() - started:.0f} s: {root}\n{blocks} of "
                      f"{plan['block_size']} tokens · {describe_kind(plan)} · {size_text(manifest)}")
        error = manifest.get("format_error")
        if error:  # measured on the first batch this build wrote (none when it only checked a complete cache)
            console.print(fidelity.describe(error, plan["kind"]))
            if plan["kind"] == "exact":
                console.print(fidelity.describe_cost(error))
        console.print(f"use it with: egad distill teacher_cache={root}", soft_wrap=True)  # a path to copy: unbroken
    barrier(runtime)
    return root


def write_shards(cfg: CacheCommandConfig, plan: dict, root: Path, splits: dict, todo: list, runtime: Runtime,
                 vocab: int) -> dict | None:
    """Write this rank's work items (shards, and the head file of an exact cache). Returns the format's
    measured error and timings (``teacher_cache.fidelity``) on the main rank's first batch, else None."""
    teacher, tokenizer = load_frozen_teacher(cfg, runtime)
    apply_document_masks(cfg, tokenizer, teacher)
    check_head_rows(teacher, vocab, "teacher")
    check_context(cfg.dataset.block_size, "dataset.block_size", teacher=teacher)
    store_dtype = getattr(torch, cfg.dtype)
    head = teacher_head(teacher, vocab)
    measured = None
    for n_done, (name, index) in enumerate(todo):
        if name == HEAD:
            write_shard(root / HEAD, {"weight": head}, {"teacher_fingerprint": plan["teacher_fingerprint"],
                                                        "vocab_size": str(vocab)})
            continue
        part = splits[name]
        first = index * cfg.shard_blocks
        ids, mask = part.ids[first:first + cfg.shard_blocks], part.mask[first:first + cfg.shard_blocks]
        fields: dict[str, list[torch.Tensor]] = {}
        for start in range(0, ids.shape[0], cfg.batch_size):  # batches aligned to the shard: resumable bit for bit
            batch = ids[start:start + cfg.batch_size]
            uniforms = None
            if plan["kind"] == "sampled":  # [B, L-1, draws], from the seed and each block's place
                uniforms = torch.stack([block_uniforms(plan["seed"], name, first + start + j, batch.shape[1] - 1,
                                                       plan["draws"]) for j in range(batch.shape[0])])
            with runtime.autocast():
                rows = teacher_rows(teacher, batch.to(runtime.device), vocab, plan, store_dtype, cfg.chunk_size,
                                    uniforms)
                if measured is None and runtime.is_main:
                    measured = fidelity.measure_format(teacher, batch.to(runtime.device), rows, plan, head)
            for key, value in rows.items():
                fields.setdefault(key, []).append(value)
        tensors = {"ids": ids.to(torch.int32), "mask": mask.bool(), **{k: torch.cat(v) for k, v in fields.items()}}
        write_shard(root / shard_name(name, index), tensors,
                    {"split": name, "first_block": str(first), "n_blocks": str(ids.shape[0]),
                     "format_version": str(FORMAT_VERSION)})
        if runtime.is_main and cfg.progress:
            console.print(f"[dim]shard {n_done + 1}/{len(todo)}: {shard_name(name, index)}[/]")
    return measured


def set_damaged_aside(root: Path) -> None:
    """A complete cache in out_dir: verify it; remove the files that are not what its manifest records, and
    the manifest, so that the build writes them again (the intact shards are kept)."""
    manifest = read_json(root / MANIFEST, "out_dir")
    problem = manifest_problem(root, manifest)
    if problem:
        raise UserError(f"out_dir: {problem}")
    bad = [c for c in check_files(root, manifest) if c.problem]
    if not bad:
        console.print(f"teacher cache already complete and intact: {root}")
        return
    for c in bad:
        console.print(f"[yellow]{root / c.file}: {describe(c)}; writing it again[/]")
        if c.file.startswith(f"{TOKENIZER_DIR}/"):
            shutil.rmtree(root / TOKENIZER_DIR, ignore_errors=True)
        else:
            (root / c.file).unlink(missing_ok=True)
    (root / MANIFEST).unlink()


def finish(root: Path, plan: dict, splits: dict, measured: dict | None = None) -> dict:
    """Check every shard (and an exact cache's head) is there, record sizes and hashes (read from disk once, and
    stamped as verified), and write the sealed manifest (atomically): the cache is complete. measured: the
    format's error and timings from this build (``teacher_cache.fidelity``), kept in the manifest."""
    names = {}
    for name, part in splits.items():
        names[name] = [shard_name(name, i) for i in range(n_shards(len(part), plan["shard_blocks"]))]
        for file in names[name]:
            if not is_complete_shard(root / file):
                raise UserError(f"teacher cache: shard {root / file} is missing after the build (did a rank fail?); "
                                f"run the same command again to write it: {plan['command']}")
    head = [HEAD] if plan["kind"] == "exact" else []
    if head and not is_complete_shard(root / HEAD, holds="weight"):
        raise UserError(f"teacher cache: the output head {root / HEAD} is missing after the build (did a rank "
                        f"fail?); run the same command again to write it: {plan['command']}")
    tokenizer_files = [str(p.relative_to(root)) for p in sorted((root / TOKENIZER_DIR).rglob("*")) if p.is_file()]
    recorded = record_files(root, [f for files in names.values() for f in files] + tokenizer_files + head)
    manifest = dict(plan)
    manifest["splits"] = {name: {"n_blocks": len(part), "shards": [{"file": f, **recorded[f]} for f in names[name]]}
                          for name, part in splits.items()}
    manifest["tokenizer_files"] = {f: recorded[f] for f in tokenizer_files}
    if head:
        manifest["head"] = {"file": HEAD, **recorded[HEAD]}
    if measured:
        manifest["format_error"] = measured
    manifest = sealed(manifest)
    write_json(root / MANIFEST, manifest)
    return manifest


def write_json(path: Path, data: dict) -> None:
    """Atomically: other ranks (and a later resume) read it while it may be rewritten."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
