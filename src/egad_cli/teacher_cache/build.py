"""One teacher pass over a dataset, written as a teacher cache (``egad cache``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from egad_cli.config.schema import TeacherConfig
from egad_cli.errors import UserError
from egad_cli.losses.cached import SPLIT_BUFFER_ROWS, split_tail
from egad_cli.losses.sampled import sampled_from_split
from egad_cli.models.documents import base_forward
from egad_cli.teacher_cache.states import store_state


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


#: the [rows, V] fp32 temporaries of the build are kept under glibc's largest mmap threshold (32 MiB): a larger
#: block is mapped fresh on every allocation and page-faulted in (measured: a sqrt over [508, 49,152] took 191 ms
#: allocating against 18 ms into a reused buffer), a smaller one is recycled from the heap
SMALL_TENSOR_BYTES = 24 << 20
#: the same on an accelerator, where the bound is memory, not the allocator
ACCELERATOR_TENSOR_BYTES = 1 << 30


def block_uniforms(seed: int, split: str, block: int, rows: int, draws: int) -> torch.Tensor:
    """[rows, draws] uniforms in [0, 1) for the draws of block `block` of `split`: a function of the cache's
    seed and the block's place only, so the same command writes the same bytes whatever batch, shard,
    rank or device computes the block (drawn on the CPU, then moved)."""
    digest = hashlib.sha256(f"egad-cache/{seed}/{split}/{block}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.rand(rows, draws, generator=generator)


@torch.no_grad()
def teacher_rows(teacher, ids: torch.Tensor, vocab: int, plan: dict, store_dtype: torch.dtype, chunk_size: int,
                 uniforms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The cached fields of a batch of blocks ids [B, L], each [B, L-1, ...] on the CPU (see manifest.FIELDS).
    plan: the cache's settings (kind, k, exponents, entropy_temps, layers); uniforms [B, L-1, draws] for a
    sampled cache (``block_uniforms``). Per chunk of tokens one log-softmax over the vocabulary feeds
    everything stored: the entropies, the top-k, the tail power sums and the draws (kind=exact: the
    entropies, and the final states as the layer ``plan["final_layer"]``)."""
    b, length = ids.shape
    layers = tuple(plan["layers"])
    exponents = tuple(plan["exponents"])
    kind = plan.get("kind", "topk")
    sampled, exact = kind == "sampled", kind == "exact"
    draw_exponent = 1.0 / plan.get("draw_temperature", 1.0)
    if sampled:  # the grid's own float (1/T may differ from it in the last bit)
        draw_exponent = next(e for e in exponents if abs(e - draw_exponent) < 1e-9)
    out = base_forward(teacher, ids, output_hidden_states=bool(layers))  # exact: the final layer is among them
    if exact:
        check_final_state(out, int(plan["final_layer"]))
    hidden = out.last_hidden_state[:, :-1].reshape(b * (length - 1), -1)  # [N, Dt]
    # The stored statistics are exact: the head's matmul in fp32 even for a teacher run in bf16, whose bf16 logits
    # would be rounded to 8 bits (an error up to |z|·2⁻⁹, 0.06 at a logit of 30, in every log-prob). Converted once.
    head = teacher.get_output_embeddings().weight[:vocab].float()  # [V, Dt]
    flat_uniforms = None if uniforms is None else uniforms.reshape(b * (length - 1), -1)  # [N, draws]
    parts: dict[str, list[torch.Tensor]] = {}
    id_dtype = torch.uint16 if vocab <= 65_536 else torch.int32
    # On a CPU, chunks of rows small enough for glibc to reuse freed memory (below its mmap threshold; a
    # fresh mmap costs a page fault per 4 KiB): the logits [C, V] of up to 24 MiB, since each matmul re-reads
    # the whole head [V, Dt] (at 25 rows a chunk the matmuls took 2.5x the forward's own head matmul), and
    # split_tail's [c, SPLIT_BUFFER_ROWS, V] work buffer on sub-chunks of those. An accelerator's caching
    # allocator has no such cost, and many small chunks would be many small kernels: chunk_size rows.
    per_row = 4 * vocab  # bytes of one fp32 row of logits
    budget = SMALL_TENSOR_BYTES if hidden.device.type == "cpu" else ACCELERATOR_TENSOR_BYTES
    rows_per_matmul = min(chunk_size, max(1, budget // per_row))
    rows_per_split = min(rows_per_matmul, max(1, budget // (per_row * SPLIT_BUFFER_ROWS)))
    # Everything stored is computed with autocast off: the caller's bf16 autocast (precision=bf16) would run the
    # matmuls of split_tail's power sums in bf16 too, and refuses torch.cat of the fp16 fields
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], rows_per_matmul):
            logits = hidden[start:start + rows_per_matmul].float() @ head.T  # [C, V] fp32
            torch.log_softmax(logits, dim=-1, out=logits)  # [C, V], in place: the one normalisation
            for sub in range(0, logits.shape[0], rows_per_split):
                logp = logits[sub:sub + rows_per_split]  # [c, V]
                uniforms_c = None if flat_uniforms is None else flat_uniforms[start + sub:start + sub + logp.shape[0]]
                row = chunk_fields(logp, plan, store_dtype, id_dtype, draw_exponent, uniforms_c)
                for name, value in row.items():  # on the device: one copy to the host at the end, not one per chunk
                    parts.setdefault(name, []).append(value)
            del logits
        fields = {name: torch.cat(chunks).reshape(b, length - 1, -1).cpu() for name, chunks in parts.items()}
        quant = plan.get("state_quant", "none")
        for layer in layers:
            # exact: the final layer is the state the head reads (check_final_state: the same tensor)
            state = out.last_hidden_state if exact and layer == plan["final_layer"] else out.hidden_states[layer]
            fields.update(store_state(f"states.{layer}", state[:, :-1], quant, store_dtype))  # [B, L-1, Dt]
    return fields


def chunk_fields(logp: torch.Tensor, plan: dict, store_dtype: torch.dtype, id_dtype: torch.dtype,
                 draw_exponent: float, uniforms: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The per-token fields of one chunk of log-probabilities logp [c, V] (T = 1) but the states: the exact
    entropies, and for the compact kinds the top-k with its tail sums and (sampled) the draws (uniforms [c, m])."""
    from egad_cli.losses.chunked import entropy_at

    temps = tuple(plan["entropy_temps"])
    kind = plan.get("kind", "topk")
    if kind == "exact":  # the stored final states hold the whole distribution: the entropies alone beside them
        return {"entropy": torch.stack([entropy_at(logp, t, normalized=True) for t in temps], dim=-1)}
    split = split_tail(logp, plan["k"], tuple(plan["exponents"]), entropy_temps=temps)
    entropies = [split.entropies[t] if t in split.entropies else entropy_at(logp, t, normalized=True) for t in temps]
    row = {"entropy": torch.stack(entropies, dim=-1)}
    if kind == "sampled":
        rows = sampled_from_split(logp, split, uniforms, draw_exponent)
        row.update(sample_ids=rows.sample_ids.to(id_dtype), sample_counts=rows.sample_counts.to(torch.uint8),
                   sample_logp=rows.sample_logp.to(store_dtype))
    top = split.head
    row.update(topk_logp=top.logp.to(store_dtype), topk_ids=top.ids.to(id_dtype), log_tail=top.log_tail.to(store_dtype))
    return row


def check_final_state(out, final_layer: int) -> None:
    """kind=exact stores the state the output head reads (last_hidden_state) as layer `final_layer`, the one the
    dual branch reads there too: they must be the same tensor (true of the HF models whose last
    hidden_states entry is the final normed state, Llama, Qwen2, GPT-2 and the others egad loads)."""
    states = out.hidden_states
    if states is None or len(states) <= final_layer or not torch.equal(states[final_layer], out.last_hidden_state):
        raise UserError(f"kind=exact: this teacher's hidden state {final_layer} (its last) is not the state its "
                        f"output head reads, so the cache could not serve both the logits and the dual branch from "
                        f"one stored state; build with kind=sampled (or kind=topk)")


def teacher_head(teacher, vocab: int) -> torch.Tensor:
    """The output head [V, Dt] the stored final states go through: lm_head (or the tied embedding) sliced to the
    tokenizer's vocabulary, in the dtype the teacher holds it (contiguous, on the CPU, for the head file)."""
    return teacher.get_output_embeddings().weight[:vocab].detach().to("cpu").contiguous()
