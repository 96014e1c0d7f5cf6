"""Writing and reading teacher-cache shards (safetensors: memory-mapped, no code in the file).

Writing is atomic per shard: a shard is written to a hidden temporary file and renamed into place,
so a reader (or a resumed build) never takes a half-written shard for a complete one; a `kill -9`
leaves at most a temporary file, which the next build removes and rewrites.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from egad_cli.data.packing import Packed
from egad_cli.errors import UserError
from egad_cli.losses.cached import TeacherTopK
from egad_cli.losses.sampled import TeacherSampled
from egad_cli.teacher_cache.manifest import cache_kind, shard_name
from egad_cli.teacher_cache.states import load_state

#: torch dtype -> safetensors dtype name
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32",
                      torch.int64: "I64", torch.uint16: "U16", torch.uint8: "U8", torch.int8: "I8",
                      torch.bool: "BOOL"}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors encoding of `tensors`, byte for byte the same for the same input: the library's
    writer orders its JSON header by a hash map (different in every process), so a resumed build would
    not reproduce an uninterrupted one's bytes. Format: u64 header length, JSON header, tensor data."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `tensors` to `path` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(safetensors_bytes(tensors, metadata))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write the cache shard {path}: {exc.strerror or exc}; the shards already "
                        f"written are kept, and the same command continues once there is room") from None


def remove_stale_temporaries(root: Path) -> None:
    """Temporary shards left by a killed build (they are never read)."""
    for tmp in root.glob(".*.safetensors.tmp-*"):
        tmp.unlink(missing_ok=True)


def is_complete_shard(path: Path, holds: str = "ids") -> bool:
    """A shard (or the head file: holds="weight") at its final name is complete (renamed only after a full
    write); its header must parse."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a list (safe_open is not a mapping)
            return holds in names
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a complete shard: it is rewritten
        return False


class SplitReader:
    """One split of a complete cache: its blocks (ids, mask) and the teacher's rows for any blocks."""

    def __init__(self, root: Path, manifest: dict, split: str):
        info = manifest["splits"].get(split)
        if info is None:
            have = ", ".join(manifest["splits"]) or "none"
            raise UserError(f"teacher_cache: {root} has no {split!r} split (it has: {have}); build it with "
                            f"`egad cache splits='[train,val]'`")
        self.root, self.split, self.manifest = root, split, manifest
        self.shard_blocks, self.n_blocks = int(manifest["shard_blocks"]), int(info["n_blocks"])
        self.block_size = int(manifest["block_size"])
        self.layers = [int(layer) for layer in manifest["layers"]]
        self.entropy_temps = [float(t) for t in manifest["entropy_temps"]]
        kind = cache_kind(manifest)
        self.sampled, self.exact = kind == "sampled", kind == "exact"
        #: exact: the layer whose stored states are the final ones (the head's input)
        self.final_layer = int(manifest["final_layer"]) if self.exact else None
        self.view_fields = ("topk_logp", "topk_ids", "log_tail") + (
            ("sample_ids", "sample_counts", "sample_logp") if self.sampled else ())
        self.head: torch.Tensor | None = None  #: exact: [V, D], set by ``use.open_cached_teacher`` (checked there)
        facts = manifest["teacher_facts"]
        self.teacher_layers, self.teacher_width = int(facts["num_hidden_layers"]), int(facts["hidden_size"])
        self._handles = []
        self._packed: Packed | None = None
        for entry in info["shards"]:
            path = root / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                raise UserError(f"teacher_cache: shard {path} is missing or has another size than its manifest "
                                f"records ({entry['bytes']} bytes); the cache was changed after it was written. "
                                f"Rebuild it: {manifest.get('command', 'egad cache …')}")
            self._handles.append(safe_open(str(path), framework="pt"))

    def packed(self) -> Packed:
        """Every block of the split, as the training data (the cache's token ids are the dataset); read
        from the shards once (distill's held-out KL and inspect-entropy ask more than once)."""
        if self._packed is None:
            ids = torch.cat([h.get_tensor("ids") for h in self._handles]).long()
            mask = torch.cat([h.get_tensor("mask") for h in self._handles]).bool()
            self._packed = Packed(ids=ids, mask=mask)
        return self._packed

    def _take(self, name: str, blocks: torch.Tensor) -> torch.Tensor:
        """Rows of field `name` for the blocks [B] (int64): [B, ...], read from the memory-mapped shards."""
        parts = []
        for b in blocks.tolist():
            shard, row = divmod(int(b), self.shard_blocks)
            parts.append(self._handles[shard].get_slice(name)[row:row + 1])
        # the step's plan runs under the run's autocast; CPU autocast's cat refuses fp16 (the stored dtype) in a
        # bf16 run ("Unexpected floating ScalarType in at::autocast::prioritize"), and a read casts nothing
        with torch.autocast(device_type="cpu", enabled=False):
            return torch.cat(parts)

    def rows(self, blocks: torch.Tensor, device: torch.device, states: bool = False) -> dict:
        """The teacher's cached outputs for the predicting positions of `blocks` [B], flattened to N = B·(L-1):
        ``top`` (TeacherTopK, or TeacherSampled for a sampled cache; fp32 on device; None for an exact cache),
        ``hidden`` (exact cache: the final states [N, D] fp32 the head reads, ``head``), ``entropy`` {T: [N]},
        and with `states` (the dual branch) ``states`` {layer: [N, D]} (fp32; the largest field, so read only
        when asked for)."""
        def read(name: str) -> torch.Tensor:
            t = self._take(name, blocks)
            return t.reshape(-1, *t.shape[2:]).to(device)

        quant = self.manifest.get("state_quant", "none")
        out = {"top": None, "hidden": None}
        if self.exact:
            out["hidden"] = load_state(read, f"states.{self.final_layer}", quant)
        else:
            out["top"] = stored_view({name: read(name) for name in self.view_fields}, self.manifest)
        entropy = read("entropy").float()  # [N, E]
        out["entropy"] = {t: entropy[:, i] for i, t in enumerate(self.entropy_temps)}
        out["states"] = {layer: out["hidden"] if layer == self.final_layer and self.exact else load_state(
            read, f"states.{layer}", quant) for layer in (self.layers if states else ())}
        return out


def stored_view(fields: dict[str, torch.Tensor], manifest: dict) -> TeacherTopK | TeacherSampled:
    """The teacher's rows of a compact cache from its stored fields (each [N, ...], on their device): TeacherTopK,
    or TeacherSampled for a sampled cache; fp32."""
    device = fields["topk_logp"].device
    exponents = torch.tensor(manifest["exponents"], dtype=torch.float32, device=device)
    top = TeacherTopK(logp=fields["topk_logp"].float(), ids=fields["topk_ids"].long(), exponents=exponents,
                      log_tail=fields["log_tail"].float())
    if cache_kind(manifest) != "sampled":
        return top
    # the grid's own value (1/T computed here may differ from it in the last bit)
    draw_exponent = min(manifest["exponents"], key=lambda e: abs(e - 1.0 / float(manifest.get("draw_temperature", 1.0))))
    return TeacherSampled(top, sample_ids=fields["sample_ids"].long(), sample_counts=fields["sample_counts"].float(),
                          sample_logp=fields["sample_logp"].float(), draws=int(manifest["draws"]),
                          draw_exponent=draw_exponent)


def sampled_rows(rows: dict[str, torch.Tensor], manifest: dict, device: torch.device) -> TeacherSampled:
    """A sampled cache's view of fields [B, L-1, ...] as ``build.teacher_rows`` returns them (flattened)."""
    names = ("topk_logp", "topk_ids", "log_tail", "sample_ids", "sample_counts", "sample_logp")
    return stored_view({n: rows[n].reshape(-1, *rows[n].shape[2:]).to(device) for n in names}, manifest)


def shard_path(root: Path, split: str, index: int) -> Path:
    return root / shard_name(split, index)
