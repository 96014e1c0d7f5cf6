"""The exact teacher cache (kind=exact): the teacher's final states + its head give back the live loss.

- every divergence, value and gradient, from the stored (fp16) states against the live teacher, within a
  tolerance derived from the rounding: the first-order change of the loss (and of its gradient) along the
  logit change the rounding makes, computed in fp64;
- the distribution from the stored states is within the rounding's bound of the live one;
- int8 states round-trip within half a quantisation step;
- a head that is not the cache's teacher's is refused; a tampered one fails the integrity check;
- caches of the earlier formats still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import divergence, egad, losses_by_step

SMOKE = ("debug=smoke",)


def _teacher(vocab: int = 96, width: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # logits of a realistic spread (a random init gives near-uniform rows)
        model.lm_head.weight.mul_(40.0)
    return model


def _exact_plan(quant: str = "none") -> dict:
    return {"kind": "exact", "layers": [2], "final_layer": 2, "exponents": [1.0], "entropy_temps": [1.0, 2.0],
            "k": 0, "state_quant": quant}


def _stored_and_live(quant: str = "none"):
    """(live final states [N, D], the states an exact cache stores, read back as fp32 [N, D], the head [V, D])."""
    from egad_cli.models.documents import base_forward
    from egad_cli.teacher_cache.build import teacher_head, teacher_rows
    from egad_cli.teacher_cache.states import load_state

    teacher = _teacher()
    ids = torch.randint(0, 96, (2, 13), generator=torch.Generator().manual_seed(1))
    rows = teacher_rows(teacher, ids, 96, _exact_plan(quant), torch.float16, 1024)
    stored = load_state(lambda f: rows[f].reshape(-1, rows[f].shape[-1]), "states.2", quant)
    with torch.no_grad():
        live = base_forward(teacher, ids).last_hidden_state[:, :-1].reshape(-1, 32)
    return live, stored, teacher_head(teacher, 96)


def _reference(name: str, z_s, z_t, tau, w):
    """Σ_i w_i τ_i² D(p_i^τ ‖ q_i^τ) in the dtype of the logits (the loss the chunked code computes)."""
    fn = divergence(name)
    t = torch.log_softmax(z_t / tau[:, None], dim=-1)
    s = torch.log_softmax(z_s / tau[:, None], dim=-1)
    return (w * tau**2 * fn(t, s)).sum()


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_fkl", "skew_rkl", "tvd", "entropy_gated_kl"])
def test_every_divergence_from_an_exact_cache_equals_the_live_loss(name):
    from egad_cli.config.policies import LOSSES
    from egad_cli.losses import chunked_distill_loss

    assert name in LOSSES
    live, stored, head = _stored_and_live()
    n = live.shape[0]
    gen = torch.Generator().manual_seed(2)
    s_hidden = torch.randn(n, 24, generator=gen)
    s_head = torch.randn(96, 24, generator=gen)
    tau = torch.linspace(0.5, 2.0, n)
    w = torch.rand(n, generator=gen) + 0.1

    def chunked(t_hidden):
        h = s_hidden.clone().requires_grad_(True)
        value, _ = chunked_distill_loss(h, s_head, t_hidden, head, tau, w, divergence=divergence(name), chunk_size=7)
        value.backward()
        return value.detach().double(), h.grad.double()

    v_live, g_live = chunked(live)
    v_cache, g_cache = chunked(stored)

    # The tolerance: what the rounding moves, to first order, computed in fp64 along the logit change it makes.
    d = torch.float64
    z_s = (s_hidden.to(d) @ s_head.to(d).T).requires_grad_(True)  # [N, V]
    z_t = live.to(d) @ head.to(d).T  # [N, V]
    dz_t = (stored.to(d) - live.to(d)) @ head.to(d).T  # [N, V] the rounding's logit change
    assert dz_t.abs().max() > 0  # fp16 rounding did change the states: the comparison is not trivial

    def loss(zs, zt):
        return _reference(name, zs, zt, tau.to(d), w.to(d))

    def grad_s(zt):  # ∂L/∂h_s = ∂L/∂z_s · W_s
        return torch.func.grad(loss, argnums=0)(z_s.detach(), zt) @ s_head.to(d)

    (_, dv) = torch.func.jvp(lambda zt: loss(z_s.detach(), zt), (z_t,), (dz_t,))
    (g_ref, dg) = torch.func.jvp(grad_s, (z_t,), (dz_t,))
    g_ref_cache = grad_s(stored.to(d) @ head.to(d).T)  # the fp64 reference at the stored states
    # fp32 arithmetic of the chunked loss: a few ulps of the terms it sums (N · V of them)
    fp32 = 64 * torch.finfo(torch.float32).eps
    # what the chunked loss computes is the fp64 reference at the live and at the stored states
    assert v_live == pytest.approx(float(loss(z_s.detach(), z_t)), rel=fp32, abs=fp32)
    assert torch.linalg.norm(g_live - g_ref) <= fp32 * torch.linalg.norm(g_ref)
    assert torch.linalg.norm(g_cache - g_ref_cache) <= fp32 * torch.linalg.norm(g_ref_cache)
    # and the two differ by what the rounding moves: to first order along its logit change (value), and for the
    # gradient too where it is smooth in the teacher's logits; tvd's sign and EOPD's gate are piecewise
    # constant, and a rounding that flips one entry's sign moves the gradient by that entry's term, which the
    # reference at the stored states (checked above) accounts for
    assert abs(v_cache - v_live) <= 2 * abs(dv) + fp32 * (abs(v_live) + 1), (float(v_cache - v_live), float(dv))
    if name not in ("tvd", "entropy_gated_kl"):
        assert torch.linalg.norm(g_cache - g_live) <= 2 * torch.linalg.norm(dg) + fp32 * torch.linalg.norm(g_ref)
    assert torch.linalg.norm(g_cache - g_live) <= 1e-3 * torch.linalg.norm(g_live)  # small, whatever the kind


def test_the_stored_distribution_is_within_the_rounding_bound():
    """fp16 rounds each state entry by at most 2⁻¹¹ of itself, so each logit moves by at most
    ε = 2⁻¹¹ Σ_d |W_vd h_d|, and each log-probability by at most 2ε (the log-partition moves by ≤ ε too)."""
    live, stored, head = _stored_and_live()
    d = torch.float64
    eps = 2.0**-11 * (live.to(d).abs() @ head.to(d).abs().T).amax(dim=-1)  # [N] the largest logit change allowed
    logp_live = torch.log_softmax(live.to(d) @ head.to(d).T, dim=-1)
    logp_cache = torch.log_softmax(stored.to(d) @ head.to(d).T, dim=-1)
    assert ((logp_cache - logp_live).abs().amax(dim=-1) <= 2 * eps).all()


@pytest.mark.numerics
def test_int8_states_round_trip_within_half_a_step():
    from egad_cli.teacher_cache.states import dequantise_int8, int8_error_bound, quantise_int8

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 64, generator=gen)
    x[0, 0] = 0.0  # an all-zero token
    x[1, 1, 3] = 300.0  # an outlier sets its token's scale
    q, scale = quantise_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (5, 7, 1) and q.abs().max() <= 127
    back = dequantise_int8(q, scale)
    assert ((back - x).abs() <= int8_error_bound(x)).all()
    assert torch.equal(back[0, 0], torch.zeros(64))
    # the bound is tight: some entry uses most of it (a loose test would pass any quantiser)
    assert ((back - x).abs()[1:] / int8_error_bound(x)[1:]).max() > 0.9


def test_int8_states_give_the_distribution_within_their_bound():
    live, stored, head = _stored_and_live("int8")
    from egad_cli.teacher_cache.states import int8_error_bound

    d = torch.float64
    per_entry = int8_error_bound(live)  # [N, 1] the largest error of any entry of a token
    eps = (per_entry.to(d) * head.to(d).abs().sum(dim=-1)[None, :]).amax(dim=-1)  # [N] largest logit change
    logp_live = torch.log_softmax(live.to(d) @ head.to(d).T, dim=-1)
    logp_cache = torch.log_softmax(stored.to(d) @ head.to(d).T, dim=-1)
    assert ((logp_cache - logp_live).abs().amax(dim=-1) <= 2 * eps).all()


# ------------------------------------------------------------------------------------------ through argv


def build_cache(out: Path, *extra: str) -> Path:
    assert egad("cache", *SMOKE, f"out_dir={out}", f"hydra.run.dir={out}-log", *extra) == 0
    return out


def distill(run: Path, *extra: str) -> int:
    return egad("distill", *SMOKE, f"hydra.run.dir={run}", "trainer.export=false", *extra)


@pytest.fixture(scope="module")
def exact(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exact")
    return build_cache(root / "cache", f"cache_dir={root / 'egad'}")


def test_the_default_cache_is_exact_and_says_what_it_costs(tmp_path, capsys):
    """`egad cache` with no kind builds the exact format: states + head, the head in the integrity manifest,
    its error against the live teacher and its training-time cost printed."""
    cache = build_cache(tmp_path / "c")
    out = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["kind"] == "exact" and manifest["format_version"] == 3
    assert manifest["final_layer"] == manifest["teacher_facts"]["num_hidden_layers"] in manifest["layers"]
    assert manifest["head"]["file"] == "head.safetensors" and (cache / "head.safetensors").is_file()
    error = manifest["format_error"]
    assert 0 <= error["kl_mean"] <= error["kl_max"] < 1e-3  # fp16 states: a rounding, not an approximation
    assert "KL(live ‖ cached)" in out and "recomputes the teacher's head" in out
    final = manifest["final_layer"]
    assert f"the final state (layer {final}: what the head reads, and the dual branch)" in out  # smoke: layers [1, 2]
    assert "at layers [1] (state_pairs=0 leaves those out)" in out
    assert "sample_ids" not in json.dumps(manifest["splits"])  # nothing of the compact formats


@pytest.mark.numerics
@pytest.mark.parametrize("method", ["kd", "egad", "rkl", "adakd"])
def test_a_run_from_the_exact_cache_follows_the_live_run(tmp_path, exact, method):
    """fp16 states: every step's loss and the held-out KL within what the rounding moves (KL to live ~1e-7
    nats/token on the smoke teacher); rkl and adakd, which read a bucketed view from a sampled cache, too."""
    assert distill(tmp_path / "live", f"method={method}") == 0
    assert distill(tmp_path / "cached", f"method={method}", f"teacher_cache={exact}") == 0
    live, cached = losses_by_step(tmp_path / "live"), losses_by_step(tmp_path / "cached")
    assert live.keys() == cached.keys() and len(live) == 4
    for step in live:
        assert cached[step] == pytest.approx(live[step], rel=2e-3), step
    a = json.loads((tmp_path / "live" / "summary.json").read_text())
    b = json.loads((tmp_path / "cached" / "summary.json").read_text())
    assert b["kl_after"] == pytest.approx(a["kl_after"], rel=2e-3) and "kl_after_se" not in b


def test_report_shows_the_cache_deviation_of_runs_and_their_live_twins(tmp_path, exact, capsys):
    """`egad report` over runs from the exact cache and the same runs live pairs them by config and seed
    and prints cache − live per group: within the rounding here; a live run with another lr is no twin."""
    sweep = tmp_path / "sweep"
    for seed in ("0", "1"):
        assert distill(sweep / "live" / seed, "method=kd", f"trainer.seed={seed}") == 0
        assert distill(sweep / "cached" / seed, "method=kd", f"trainer.seed={seed}", f"teacher_cache={exact}") == 0
    assert distill(sweep / "other" / "0", "method=kd", "trainer.seed=0", "trainer.lr=0.01") == 0
    capsys.readouterr()
    assert egad("report", f"sweep_dir={sweep}") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "cache deviation" in out and "measured from its cache" in out
    md = (sweep / "report.md").read_text()
    table = md.split("Cache deviation:")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "exact" in line]
    assert len(rows) == 1, table  # one group: kd from this cache, over both seeds
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"{exact.name} (exact)" and cells[2] == "2"
    live, cached = float(cells[3]), float(cells[4])
    assert cached == pytest.approx(live, rel=2e-3)  # what the per-step test allows the rounding
    summaries = [json.loads((sweep / kind / seed / "summary.json").read_text())["kl_after"]
                 for kind in ("live", "cached") for seed in ("0", "1")]
    assert live == pytest.approx((summaries[0] + summaries[1]) / 2, abs=1e-4)
    assert cached == pytest.approx((summaries[2] + summaries[3]) / 2, abs=1e-4)


def _rewrite_head(cache: Path, head: torch.Tensor, meta: dict) -> None:
    """Put another head in the cache and re-record it in a re-sealed manifest (so the integrity check passes:
    the refusal must come from what the head is, not from its digest)."""
    from egad_cli.teacher_cache.integrity import record_files, sealed
    from egad_cli.teacher_cache.shards import write_shard

    write_shard(cache / "head.safetensors", {"weight": head.contiguous()}, meta)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest.pop("manifest_sha256", None)
    manifest["head"] = {"file": "head.safetensors", **record_files(cache, ["head.safetensors"])["head.safetensors"]}
    (cache / "manifest.json").write_text(json.dumps(sealed(manifest), indent=2))


@pytest.mark.parametrize("case", ["teacher", "shape"])
def test_a_head_that_is_not_the_cache_teachers_is_refused(tmp_path, capsys, case):
    from safetensors import safe_open

    cache = build_cache(tmp_path / "c")
    with safe_open(str(cache / "head.safetensors"), framework="pt") as f:
        head, meta = f.get_tensor("weight"), dict(f.metadata())
    if case == "teacher":
        meta["teacher_fingerprint"] = "0123456789abcdef"  # another teacher's head (same shape)
    else:
        head = head[:, :-1]
    _rewrite_head(cache, head, meta)
    capsys.readouterr()
    assert distill(tmp_path / "run", f"teacher_cache={cache}") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "head.safetensors is not the head of this cache's teacher" in err and "egad cache" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_bf16_head_trains_and_evaluates(tmp_path):
    """A head stored in bf16 (a teacher loaded in bf16, as on a GPU) meets the fp32 states in fp32: the held-out
    KL before training and the steps run, and equal those from the same head in fp32 (the rounding of the head is
    the only difference, so both runs read the same bf16 values)."""
    from safetensors import safe_open

    cache = build_cache(tmp_path / "c")
    with safe_open(str(cache / "head.safetensors"), framework="pt") as f:
        head, meta = f.get_tensor("weight"), dict(f.metadata())
    rounded = head.to(torch.bfloat16)
    _rewrite_head(cache, rounded, meta)
    assert distill(tmp_path / "bf16", f"teacher_cache={cache}") == 0
    _rewrite_head(cache, rounded.float(), meta)  # the same values, in fp32
    assert distill(tmp_path / "fp32", f"teacher_cache={cache}") == 0
    a = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    b = json.loads((tmp_path / "fp32" / "summary.json").read_text())
    assert a["kl_before"] == pytest.approx(b["kl_before"], rel=1e-6) and a["kl_after"] == pytest.approx(b["kl_after"], rel=1e-6)


def test_a_tampered_head_fails_the_integrity_check(tmp_path, capsys):
    cache = build_cache(tmp_path / "c")
    data = bytearray((cache / "head.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (cache / "head.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert distill(tmp_path / "run", f"teacher_cache={cache}") == 2
    assert "head.safetensors" in " ".join(capsys.readouterr().err.split())
    # the cache's own command rewrites just the damaged head
    assert egad("cache", *SMOKE, f"out_dir={cache}", f"hydra.run.dir={tmp_path / 'log'}") == 0
    assert distill(tmp_path / "run2", f"teacher_cache={cache}") == 0


def test_int8_states_build_train_and_say_their_error(tmp_path, capsys):
    cache = build_cache(tmp_path / "c", "state_quant=int8")
    out = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["state_quant"] == "int8" and "int8" in out
    assert manifest["format_error"]["kl_max"] < 1e-2
    assert distill(tmp_path / "run", f"teacher_cache={cache}", "method=egad") == 0


def test_state_quant_is_refused_for_the_compact_kinds(capsys, tmp_path):
    assert egad("cache", *SMOKE, "kind=sampled", "state_quant=int8", f"hydra.run.dir={tmp_path}") == 2
    assert "state_quant" in capsys.readouterr().err


def test_a_sampled_cache_of_format_2_is_read_as_before(tmp_path):
    """A cache written before the exact kind (format_version 2): still read, as sampled."""
    from egad_cli.teacher_cache.integrity import sealed

    cache = build_cache(tmp_path / "c", "kind=sampled")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest.pop("manifest_sha256", None)
    manifest["format_version"] = 2
    (cache / "manifest.json").write_text(json.dumps(sealed(manifest), indent=2))
    assert distill(tmp_path / "run", "method=kd", f"teacher_cache={cache}") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["kl_after_se"] > 0  # the sampled estimate, with its error bar


def test_a_hint_for_a_compact_cache_keeps_its_kind_and_one_to_exact_drops_its_settings():
    """Rebuild hints: a cache built when sampled was the default (no kind= in its command) is rebuilt sampled,
    not as the new default; the hint to an exact cache drops the settings kind=exact refuses (k=…)."""
    from egad_cli.teacher_cache.manifest import rebuild_hint
    from egad_cli.teacher_cache.use import COMPACT_KEYS

    old = {"kind": "sampled", "command": "egad cache k=8 draws=32 out_dir=/x"}
    assert rebuild_hint(old, layers=[15, 30]) == "egad cache k=8 draws=32 kind=sampled 'layers=[15,30]'"
    assert rebuild_hint(old, drop=COMPACT_KEYS, kind="exact") == "egad cache kind=exact"
    assert rebuild_hint({"command": "egad cache"}, entropy_temps=[1.0, 2.0]) == \
        "egad cache kind=topk 'entropy_temps=[1,2]'"  # format 1: top-k, saying nothing
    assert rebuild_hint({"kind": "exact", "command": "egad cache"}, layers=[3]) == "egad cache 'layers=[3]'"
