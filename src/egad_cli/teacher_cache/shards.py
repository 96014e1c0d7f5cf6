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

#: torch dtype -> safetensors dtype name
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32",
                      torch.int64: "I64", torch.uint16: "U16", torch.uint8: "U8", torch.bool: "BOOL"}


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


def is_complete_shard(path: Path) -> bool:
    """A shard at its final name is complete (renamed only after a full write); its header must parse."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a list (safe_open is not a mapping)
            return "ids" in names
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
        self.exponents = torch.tensor(manifest["exponents"], dtype=torch.float32)
        self.sampled = cache_kind(manifest) == "sampled"
        self.draws = int(manifest.get("draws", 0))
        # the grid's own value (1/T computed here may differ from it in the last bit)
        draw_exponent = 1.0 / float(manifest.get("draw_temperature", 1.0))
        self.draw_exponent = min(manifest["exponents"], key=lambda e: abs(e - draw_exponent))
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
        return torch.cat(parts)

    def rows(self, blocks: torch.Tensor, device: torch.device, states: bool = False) -> dict:
        """The teacher's cached outputs for the predicting positions of `blocks` [B], flattened to N = B·(L-1):
        ``top`` (TeacherTopK, or TeacherSampled for a sampled cache; fp32 on device), ``entropy`` {T: [N]},
        and with `states` (the dual branch)
        ``states`` {layer: [N, D]} (fp32; the largest field, so read only when asked for)."""
        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, *t.shape[2:]).to(device)

        top = TeacherTopK(logp=flat(self._take("topk_logp", blocks)).float(),
                          ids=flat(self._take("topk_ids", blocks)).long(),
                          exponents=self.exponents.to(device),
                          log_tail=flat(self._take("log_tail", blocks)).float())
        if self.sampled:
            top = TeacherSampled(top, sample_ids=flat(self._take("sample_ids", blocks)).long(),
                                 sample_counts=flat(self._take("sample_counts", blocks)).float(),
                                 sample_logp=flat(self._take("sample_logp", blocks)).float(), draws=self.draws,
                                 draw_exponent=self.draw_exponent)
        entropy = flat(self._take("entropy", blocks)).float()  # [N, E]
        return {"top": top, "entropy": {t: entropy[:, i] for i, t in enumerate(self.entropy_temps)},
                "states": {layer: flat(self._take(f"states.{layer}", blocks)).float()
                           for layer in (self.layers if states else ())}}


def shard_path(root: Path, split: str, index: int) -> Path:
    return root / shard_name(split, index)
