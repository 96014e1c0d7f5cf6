"""State trees (nested dicts/lists of tensors, numbers, strings) to JSON + a tensor dict, and back — no pickle.

A checkpoint must never run code when it is loaded (a run dir can come from someone else), so the
training state is split into what safetensors stores (tensors) and what JSON stores (everything
else), and decoding accepts only the few tagged forms written here:

    {"__tensor__": key}                 a tensor, stored under `key` in the tensor dict
    {"__tuple__": [...]}                a tuple (RNG states are tuples)
    {"__items__": [[k, v], ...]}        a dict whose keys are not all strings (optimizer state: ints)
    {"__ndarray__": [...], "dtype": s}  a numpy array (numpy's RNG state), numeric dtypes only

Tensors that share storage (tied embeddings) are stored once and come back as one tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: numpy dtypes an __ndarray__ may declare (numeric only: an object dtype could smuggle anything)
NDARRAY_DTYPES = {"uint32", "uint64", "int32", "int64", "float32", "float64", "uint8", "bool"}
_TAGS = ("__tensor__", "__tuple__", "__items__", "__ndarray__")


class CodecError(ValueError):
    """The JSON is not a state tree written by egad (or was altered)."""


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able tree, {key: contiguous CPU tensor})."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}  # (data_ptr, shape, stride, dtype) -> key: one copy of shared storage

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.detach()
            ident = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
            if x.numel() and ident in seen:
                return {"__tensor__": seen[ident]}
            key = str(len(tensors))
            tensors[key] = x.cpu().contiguous()
            if x.numel():
                seen[ident] = key
            return {"__tensor__": key}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not any(k in x for k in _TAGS):
                return {k: enc(v) for k, v in x.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, np.ndarray):
            if str(x.dtype) not in NDARRAY_DTYPES:
                raise TypeError(f"cannot store a numpy array of dtype {x.dtype} in a checkpoint")
            return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
        if isinstance(x, np.generic):
            return x.item()
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a checkpoint (tensors, numbers, strings, "
                        f"lists, tuples and dicts only)")

    return enc(tree), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`; anything that is not one of its forms raises CodecError."""

    def dec(x: Any) -> Any:
        if isinstance(x, dict):
            if "__tensor__" in x:
                key = x["__tensor__"]
                if len(x) != 1 or key not in tensors:
                    raise CodecError(f"reference to a missing tensor {key!r}")
                return tensors[key]
            if "__tuple__" in x:
                return tuple(dec(v) for v in _only(x, "__tuple__", list))
            if "__items__" in x:
                return {_hashable(dec(k)): dec(v) for k, v in _only(x, "__items__", list)}
            if "__ndarray__" in x:
                if set(x) != {"__ndarray__", "dtype"} or x["dtype"] not in NDARRAY_DTYPES:
                    raise CodecError(f"bad array entry {sorted(x)}")
                return np.asarray(x["__ndarray__"], dtype=x["dtype"])
            return {k: dec(v) for k, v in x.items()}
        if isinstance(x, list):
            return [dec(v) for v in x]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise CodecError(f"unexpected {type(x).__name__} in the state")

    return dec(tree)


def _only(x: dict, tag: str, kind: type):
    if len(x) != 1 or not isinstance(x[tag], kind):
        raise CodecError(f"bad {tag} entry")
    return x[tag]


def _hashable(k: Any) -> Any:
    if isinstance(k, (str, int, float, bool, tuple)) or k is None:
        return k
    raise CodecError(f"a dict key of type {type(k).__name__}")
