"""One teacher pass over a dataset, written as a teacher cache (``egad cache``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from egad_cli.config.schema import TeacherConfig
from egad_cli.losses.cached import topk_from_logits
from egad_cli.losses.divergences import entropy
from egad_cli.models.documents import base_forward


def teacher_fingerprint(cfg: TeacherConfig, cache_dir: Path) -> str:
    """Identity of the teacher's weights without reading them all: a random teacher's architecture and
    seed; a GGUF file's content key (size, header and tail); an HF directory's config.json and the
    names, sizes, first and last MiB of its weight files; a hub id with its revision (null: main, which
    moves: pin teacher.revision for a cache that must stay valid)."""
    from egad_cli.models.loading import _gguf_cache_dir, gguf_path

    h = hashlib.sha256(cfg.source.encode())
    if cfg.source == "random":
        from dataclasses import asdict

        h.update(json.dumps([asdict(cfg.arch), cfg.seed], sort_keys=True).encode())
    elif cfg.source == "gguf":
        h.update(_gguf_cache_dir(gguf_path(cfg), cache_dir).name.encode())
    else:
        path = Path(str(cfg.path)).expanduser()
        if path.is_dir():
            h.update((path / "config.json").read_bytes() if (path / "config.json").is_file() else b"")
            weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
            h.update(json.dumps([(p.name, p.stat().st_size) for p in weights]).encode())
            for p in weights:  # the first and last MiB of each (header and data): a retrained teacher differs
                with open(p, "rb") as f:
                    h.update(f.read(1 << 20))
                    f.seek(max(0, p.stat().st_size - (1 << 20)))
                    h.update(f.read(1 << 20))
        else:
            h.update(f"{cfg.path}@{cfg.revision}".encode())
    return h.hexdigest()[:16]


def tensor_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def teacher_rows(teacher, ids: torch.Tensor, vocab: int, k: int, exponents: tuple[float, ...],
                 entropy_temps: tuple[float, ...], layers: tuple[int, ...], store_dtype: torch.dtype,
                 chunk_size: int) -> dict[str, torch.Tensor]:
    """The cached fields of a batch of blocks ids [B, L], each [B, L-1, ...] on the CPU (see manifest.FIELDS)."""
    b, length = ids.shape
    out = base_forward(teacher, ids, output_hidden_states=bool(layers))
    hidden = out.last_hidden_state[:, :-1].reshape(b * (length - 1), -1)  # [N, Dt]
    head = teacher.get_output_embeddings().weight[:vocab]  # [V, Dt]
    parts: dict[str, list[torch.Tensor]] = {"topk_logp": [], "topk_ids": [], "log_tail": [], "entropy": []}
    id_dtype = torch.uint16 if vocab <= 65_536 else torch.int32
    dt = torch.promote_types(hidden.dtype, head.dtype)
    for start in range(0, hidden.shape[0], chunk_size):
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # as the live loss computes them
            logits = (hidden[start:start + chunk_size].to(dt) @ head.to(dt).T).float()  # [C, V]
        top = topk_from_logits(logits, k, exponents)
        parts["topk_logp"].append(top.logp.to(store_dtype).cpu())
        parts["topk_ids"].append(top.ids.to(id_dtype).cpu())
        parts["log_tail"].append(top.log_tail.to(store_dtype).cpu())
        parts["entropy"].append(torch.stack([entropy(torch.log_softmax(logits / t, dim=-1)) for t in entropy_temps],
                                            dim=-1).cpu())  # [C, E]
    fields = {name: torch.cat(chunks).reshape(b, length - 1, -1) for name, chunks in parts.items()}
    for layer in layers:
        fields[f"states.{layer}"] = out.hidden_states[layer][:, :-1].to(store_dtype).cpu()  # [B, L-1, Dt]
    return fields
