"""Every bound is checked by validate(), before any model is loaded, naming the key; every bound a policy
constructor checks is also a validate() bound; nan and inf never pass."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, get_type_hints

import pytest
from conftest import typed_config

from egad_cli.config import ConfigError, non_finite_problems
from egad_cli.config.policies import POLICY_REGISTRIES, PolicyContext
from egad_cli.config.problems import Problems
from egad_cli.config.schema import DistillConfig

# key -> (overrides that make the key exist and be checked, an out-of-range value)
BOUNDED = {
    "difficulty.n_bins": (["difficulty=running_quantile"], 0),
    "weighting.temperature": (["method=eakd"], 0),
    "weighting.r0": (["method=adakd"], 1.5),
    "weighting.beta": (["method=adakd"], 1.0),
    "weighting.warmup_frac": (["method=adakd"], 1.0),
    "weighting.eps": (["method=adakd"], -0.1),
    "weighting.delta": (["method=adakd"], 1.5),
    "weighting.r_min": (["method=adakd"], 0),
    "temperature.base": (["method=kd"], 0),
    "temperature.t_min": (["temperature=entropy"], 0),
    "temperature.t_max": (["temperature=idts"], 0.1),
    "temperature.target": (["temperature=target_entropy"], -1),
    "curriculum.rho": (["curriculum=linear"], 0),
    "curriculum.gamma": (["curriculum=cosine"], -1),
    "curriculum.c0": (["curriculum=sqrt"], 1.5),
    "curriculum.n_stages": (["curriculum=step"], 0),
    "branch.q": (["branch=dual"], 1.5),
    "branch.mu": (["branch=dual"], -1),
    "branch.n_pairs": (["branch=dual"], 0),
    "branch.projector_lr_mult": (["branch=dual"], -1),
    "loss.memory_mb": ([], 0),
    "loss.keep_teacher_logits_mb": ([], -1),
    "loss.beta": (["loss=jsd"], 1.0),
    "loss.alpha": (["loss=skew_rkl"], 0),
    "method.kd_weight": ([], -1),
    "method.ce_weight": ([], -1),
    "trainer.max_steps": ([], 0),
    "trainer.max_tokens": ([], 0),
    "trainer.batch_size": ([], 0),
    "trainer.grad_accum": ([], 0),
    "trainer.lr": ([], -1e-3),
    "trainer.min_lr_ratio": ([], 1.5),
    "trainer.warmup_steps": ([], -1),
    "trainer.weight_decay": ([], -0.1),
    "trainer.beta1": ([], 1.0),
    "trainer.beta2": ([], -0.1),
    "trainer.grad_clip": ([], -1),
    "trainer.log_every": ([], 0),
    "trainer.ckpt_every": ([], -1),
    "trainer.keep_ckpts": ([], 0),
    "trainer.threads": ([], 0),
    "eval.max_tokens": ([], -1),
    "eval.every": ([], -1),
    "eval.batch_size": ([], 0),
    "eval.max_new_tokens": ([], -1),
    "eval.onpolicy_prompts": ([], -1),
    "loss.threshold": (["loss=entropy_gated_kl"], -0.5),
    "loss.fkl_weight": (["loss=entropy_gated_kl"], -1),
    "onpolicy.lmbda": ([], 1.5),
    "onpolicy.max_new_tokens": (["onpolicy.lmbda=1"], 0),
    "onpolicy.prompt_tokens": (["onpolicy.lmbda=1"], 0),
    "onpolicy.temperature": (["onpolicy.lmbda=1"], 0),
    "onpolicy.top_p": (["onpolicy.lmbda=1"], 1.5),
    "dataset.block_size": ([], 4),
    "dataset.val_fraction": ([], 1.0),
    "dataset.max_train_tokens": ([], 0),
    "dataset.max_val_tokens": ([], 0),
    "student.num_layers": (["student=from_teacher"], 0),
    "student.tokenizer_vocab_size": (["student.tokenizer=train"], 10),
    "cross.uld_weight": ([], -1),
    "cross.uld_top": ([], 0),
    "cross.min_aligned": ([], 1.5),
    **{f"student.arch.{f}": ([], 0) for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                              "intermediate_size", "max_position_embeddings")},
    **{f"teacher.arch.{f}": (["teacher=random"], 0) for f in ("hidden_size", "num_layers", "num_heads",
                                                             "num_kv_heads", "intermediate_size",
                                                             "max_position_embeddings")},
}
#: numeric fields any finite value of which is meaningful
UNBOUNDED = {"temperature.kappa", "temperature.c", "trainer.seed", "teacher.seed", "student.seed", "onpolicy.seed"}


NUMERIC = (int, float, Optional[int], Optional[float])


def numeric_fields(node_type: type, prefix: str) -> set[str]:
    """Dotted keys of the int/float fields of a config dataclass, nested dataclasses included."""
    hints = get_type_hints(node_type)
    out = set()
    for f in dataclasses.fields(node_type):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out |= numeric_fields(hints[f.name], key)
        elif hints[f.name] in NUMERIC:
            out.add(key)
    return out


def all_numeric_keys() -> set[str]:
    keys = numeric_fields(DistillConfig, "")
    for registry in POLICY_REGISTRIES:
        for cls in dict(registry.items()).values():
            keys |= numeric_fields(cls, registry.group)
    return keys


def test_every_numeric_field_is_classified():
    """A new numeric field must get a bound (and an entry in BOUNDED) or be declared unbounded."""
    keys = all_numeric_keys()
    assert keys, "no numeric field found: the walk over the schema is broken"
    assert keys == set(BOUNDED) | UNBOUNDED, (
        f"unclassified: {sorted(keys - set(BOUNDED) - UNBOUNDED)}; stale: {sorted(set(BOUNDED) | UNBOUNDED - keys)}")


@pytest.mark.parametrize("key", sorted(BOUNDED))
def test_out_of_range_value_is_reported_by_validate_naming_the_key(key):
    overrides, bad = BOUNDED[key]
    with pytest.raises(ConfigError) as err:
        typed_config([*overrides, f"{key}={bad}"])
    assert f"{key}:" in str(err.value)
    typed_config(overrides)  # and the same config without the bad value is valid


@pytest.mark.parametrize("bad", ["0", "-3", "big", "true", "1.5"])
def test_chunk_size_is_auto_or_a_positive_count(bad):
    with pytest.raises(ConfigError) as err:
        typed_config([f"loss.chunk_size={bad}"])
    assert "loss.chunk_size: must be auto or a positive number of tokens" in str(err.value)
    assert typed_config(["loss.chunk_size=256"]).loss.chunk_rows(49152) == 256
    assert typed_config([]).loss.chunk_rows(49152) == 2**30 // (4 * 49152 * 4)  # auto, loss.memory_mb=1024


@pytest.mark.parametrize("key,value", [("temperature.base", "inf"), ("trainer.lr", "inf"),
                                       ("temperature.kappa", "nan"), ("curriculum.gamma", "inf")])
def test_non_finite_values_are_refused(key, value):
    with pytest.raises(ConfigError) as err:
        typed_config(["method=egad", f"{key}={value}"])
    assert f"{key}: must be a finite number" in str(err.value)


PROBES = (-1.0, 0.0, 1e-3, 0.5, 1.0, 1.5, 3.0, 1e6)


def _probe_nodes():
    for registry in POLICY_REGISTRIES:
        for name, cls in registry.items():
            hints = get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if hints[f.name] in (int, float):
                    yield pytest.param(registry.group, cls, f.name, id=f"{registry.group}={name}.{f.name}")


@pytest.mark.parametrize("group,cls,field", list(_probe_nodes()))
def test_what_validate_accepts_every_constructor_accepts(group, cls, field):
    """No bound lives only in a constructor: for every probe value, either validate's checks report the
    field, or the policy (or divergence) builds."""
    ctx = PolicyContext(vocab_size=50, total_steps=10)
    for value in PROBES:
        node = cls(**{field: get_type_hints(cls)[field](value)})
        out = Problems()
        node.problems(out)
        non_finite_problems(node, group, out)
        if out:
            continue
        built = node.divergence() if group == "loss" else node.build(ctx)
        assert built is not None


def test_every_registered_node_checks_its_fields_under_its_group_key():
    """problems() names keys as the user types them: group.field."""
    for registry in POLICY_REGISTRIES:
        for cls in dict(registry.items()).values():
            node = cls()
            hints = get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if hints[f.name] is float:
                    setattr(node, f.name, math.nan)
            out = Problems()
            non_finite_problems(node, registry.group, out)
            assert all(p.startswith(f"{registry.group}.") for p in out), out
