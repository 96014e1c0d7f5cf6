"""Data parallelism for the distillation unit: DDP or FSDP2 on the student, FSDP2 on the frozen teacher,
and full (world-size independent) state dicts for checkpoints and the export.

FSDP2 (``torch.distributed.fsdp.fully_shard``), trainer.strategy=fsdp:

* student: each decoder layer is its own FSDP unit, then the root ``TrainModules`` (embeddings, final
  norm, lm_head, the dual branch's projectors). The root is lazily initialised once, at wrap time, so
  that calls that do not enter through the root (held-out KL, on-policy sampling through ``generate``)
  find the layers initialised as non-roots.
* the lm_head is read *outside* a module forward (the chunked loss takes its weight): after the root's
  forward FSDP2 keeps the root's parameters unsharded until the backward is done (it does not reshard
  the root after forward), so the loss sees the full head, gathered once per micro-batch with the root,
  and its gradient is reduce-scattered with the root's in FSDP2's end-of-backward callback. Outside a
  training step, ``gathered(model)`` unshards the root explicitly.
* teacher: each decoder layer and then its base model (embeddings, norm) are sharded, with no optimizer
  state; its lm_head stays replicated (read by every loss chunk: one all-gather per chunk would cost
  more than the replica's memory, V × D).
* on CUDA, a mixed-precision policy: bf16 parameters and compute, fp32 gradient reduction.

Checkpoints use ``torch.distributed.checkpoint.state_dict`` to gather full, FQN-keyed model and
optimizer states (on rank 0; the same keys a single process writes) and to load them back into any
world size and strategy. The files themselves are egad's safetensors + JSON checkpoint: DCP's own
on-disk format stores its metadata as a pickle, which egad never loads from a file it did not write.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from egad_cli.engine.runtime import Runtime
from egad_cli.errors import UserError
from egad_cli.models.documents import base_forward

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=True)


def decoder_layers(model: nn.Module, key: str = "trainer.strategy=fsdp") -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (``model.model.layers`` for Llama, Qwen, Mistral, …)."""
    base = getattr(model, "base_model", model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UserError(f"{key}: cannot find the decoder layers of {type(model).__name__} "
                    f"(looked for base_model.layers / .h / .blocks); leave {key.split('=')[0]} at its default "
                    f"for this model")


def _mesh(runtime: Runtime):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(runtime.device.type, (runtime.world_size,))


def _mp_policy(runtime: Runtime):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if runtime.device.type == "cuda" and runtime.autocast_dtype is not None:
        return MixedPrecisionPolicy(param_dtype=runtime.autocast_dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def preflight_attention(attention: str, runtime: Runtime, key: str = "trainer.attention") -> None:
    """flash_attention_2 needs CUDA and the flash-attn package: say so before any model loads."""
    if attention != "flash_attention_2":
        return
    import importlib.util

    if runtime.device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        raise UserError(f"{key}=flash_attention_2 needs a CUDA device and the flash-attn package "
                        f"(pip install flash-attn); here: device {runtime.device}, flash-attn "
                        f"{'installed' if importlib.util.find_spec('flash_attn') else 'not installed'}. "
                        f"Use {key}=auto (SDPA) or sdpa")


def set_attention(model: nn.Module, attention: str, key: str = "trainer.attention") -> None:
    """trainer.attention: the attention kernel transformers runs (auto: its default, SDPA where supported)."""
    if attention == "auto":
        return
    try:
        model.set_attn_implementation(attention)
    except (ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}={attention}: {type(model).__name__} cannot use it here ({first}); "
                        f"use {key}=auto or sdpa") from None


def compile_layers(model: nn.Module) -> None:
    """trainer.compile: torch.compile each decoder layer in place (one graph per layer type, recompiled for
    nothing when the step's shapes repeat; module names and state dicts are unchanged)."""
    for layer in decoder_layers(model, key="trainer.compile"):
        layer.compile()


def wrap_trainable(train_modules: nn.Module, student: nn.Module, runtime: Runtime, example_ids: torch.Tensor,
                   compile: bool = False, activation_checkpointing: bool = False) -> nn.Module:
    """The module that runs the training forward: ``train_modules`` itself (single), DDP around it (ddp),
    or ``train_modules`` sharded in place with FSDP2 (fsdp). example_ids [B, L]: a few tokens for FSDP2's
    lazy initialisation through the root. compile / activation_checkpointing: trainer.compile and
    trainer.activation_checkpointing, applied to the student's layers before any wrapping."""
    if activation_checkpointing:
        # non-reentrant: works under DDP and FSDP2, and with inputs that do not require grad
        if hasattr(student, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name is deprecated
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if compile:
        compile_layers(student)
    if runtime.strategy == "ddp" and runtime.world_size > 1:
        return nn.parallel.DistributedDataParallel(train_modules)
    if runtime.strategy != "fsdp":
        return train_modules
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns when a root returns views (the HF output's hidden states are), because an in-place op on
    # one would skip its backward hook. The unit never writes to the root's outputs: it slices and reshapes
    # them into new tensors (tested: fsdp follows the single-process curve), so the warning is noise here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPTrainModules\) returned a view tensor")
    mesh, mp = _mesh(runtime), _mp_policy(runtime)
    for layer in decoder_layers(student):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(train_modules, mesh=mesh, mp_policy=mp)
    with torch.no_grad():  # lazy init through the root (see the module docstring); a 2-token forward
        train_modules(example_ids[:1, :2])
    # The root keeps its parameters unsharded after a forward; shard them again, so that the optimizer,
    # built next from the module's parameters, holds the sharded ones (DTensors), as it must.
    train_modules.reshard()
    return train_modules


class _TeacherRoot(nn.Module):
    """The FSDP2 root around a frozen teacher. Sharding the HF model itself would change its class, and
    transformers finds what a model can record (its hidden states) by class; so the layers are sharded, and
    this wrapper owns the rest (embeddings, final norm, lm_head), which stays gathered for good."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, ids: torch.Tensor):
        return base_forward(self.teacher, ids)


def prepare_teacher(teacher: nn.Module, runtime: Runtime, example_ids: torch.Tensor | None = None,
                    compile: bool = False) -> None:
    """trainer.compile on the teacher's layers; under fsdp, FSDP2 on its layers, each gathered for its own
    forward only, with the embeddings, final norm and lm_head replicated (the loss reads the lm_head in
    every chunk; a teacher is never trained, so they are gathered once). example_ids [B, L]: a few tokens."""
    if compile:
        compile_layers(teacher)
    if runtime.strategy != "fsdp":
        return
    from torch.distributed.fsdp import fully_shard

    mesh, mp = _mesh(runtime), _mp_policy(runtime)
    for layer in decoder_layers(teacher):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    root = fully_shard(_TeacherRoot(teacher), mesh=mesh, mp_policy=mp)
    ids = example_ids if example_ids is not None else torch.zeros(1, 2, dtype=torch.long, device=runtime.device)
    with torch.no_grad():  # lazy init through the root, which then keeps its parameters gathered
        root(ids[:1, :2])
    root.unshard()


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gathered(module: nn.Module):
    """The root's parameters unsharded for calls that do not enter through its forward (evaluation,
    sampling); the layers gather themselves in their own hooks. A no-op for an unsharded module."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


@contextlib.contextmanager
def no_sync(model: nn.Module):
    """Gradient accumulation without communication, for every micro-batch of a step but its last: DDP's
    ``no_sync``; FSDP2 keeps the unsharded gradients and reduce-scatters their sum after the last one."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# ------------------------------------------------------------------------------------- state dicts


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """FQN -> full tensor on the CPU (every rank must call it; under fsdp only rank 0 gets the tensors)."""
    if not is_sharded(module) and not _has_sharded_child(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return get_model_state_dict(module, options=_FULL)


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state (as ``full_model_state`` wrote it, at any world size) into a plain or sharded module."""
    if not is_sharded(module) and not _has_sharded_child(module):
        module.load_state_dict(state)
        return
    set_model_state_dict(module, state, options=_LOAD)


def student_export_state(student: nn.Module, weights: dict[str, torch.Tensor] | None) -> dict | None:
    """The student's part of a gathered TrainModules state, as ``save_pretrained`` would write it from the
    model itself: a tied lm_head (the same parameter as the input embeddings) is left out. None: save the
    model's own parameters (nothing was sharded)."""
    if weights is None:
        return None
    own = {k.removeprefix("student."): v for k, v in weights.items() if k.startswith("student.")}
    head, embed = student.get_output_embeddings(), student.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        name = next(n for n, m in student.named_modules() if m is head)
        own.pop(f"{name}.weight", None)
    return own


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter FQN (not by position), gathered in full: loadable into the
    same model at any world size or strategy. torch's helper (a collective) gathers sharded states; it is
    not asked for an optimizer without state yet (a checkpoint before the first step), which it would
    initialise with a zero-lr step, counting a step that never happened."""
    if (is_sharded(module) or _has_sharded_child(module)) and optimizer.state:
        return get_optimizer_state_dict(module, optimizer, options=_FULL)
    names = _param_names(module, optimizer)  # position -> FQN
    state = optimizer.state_dict()
    return {"state": {names[i]: _to_cpu(v) for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a name-keyed state (``full_optimizer_state``) or a positional one (an earlier egad, one process)."""
    groups = state.get("param_groups") or [{}]
    positional = bool(groups[0].get("params")) and isinstance(groups[0]["params"][0], int)
    sharded = is_sharded(module) or _has_sharded_child(module)
    if positional and sharded:
        raise UserError("trainer.resume: this checkpoint was written by an earlier egad in one process; resume "
                        "it with trainer.strategy=single or ddp")
    if sharded and state.get("state"):
        set_optimizer_state_dict(module, optimizer, state, options=_LOAD)
        return
    if not positional:  # names -> the optimizer's positions
        position = {name: i for i, name in _param_names(module, optimizer).items()}
        try:
            state = {"state": {position[k]: v for k, v in state["state"].items()},
                     "param_groups": [{**g, "params": [position[n] for n in g["params"]]}
                                      for g in state["param_groups"]]}
        except KeyError as exc:
            raise ValueError(f"the checkpoint's optimizer holds a parameter this model lacks: {exc}") from None
    optimizer.load_state_dict(state)


def _param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, str]:
    """The optimizer's parameter positions (as in its state_dict) -> their FQNs in `module`."""
    names = {id(p): n for n, p in module.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return {i: names[id(p)] for i, p in enumerate(params)}


def _to_cpu(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    return tree


def _has_sharded_child(module: nn.Module) -> bool:
    return any(is_sharded(m) for m in module.modules())
