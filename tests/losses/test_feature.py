"""Feature branch: default layer map and projector losses."""

import pytest
import torch

from egad_cli.losses.feature import FeatureProjectors, default_layer_map

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels


def test_layer_map_single_pair_is_last_layers():
    assert default_layer_map(2, 2, 1) == [(2, 2)]
    assert default_layer_map(6, 30, 1) == [(6, 30)]


def test_layer_map_evenly_spaced_plus_last():
    assert default_layer_map(4, 30, 2) == [(2, 15), (4, 30)]
    assert default_layer_map(6, 24, 3) == [(2, 8), (4, 16), (6, 24)]


def test_layer_map_pairs_clipped_to_student_depth():
    m = default_layer_map(2, 30, 5)
    assert m == [(1, 15), (2, 30)]


@pytest.mark.parametrize("ls,lt,n", [(3, 7, 2), (12, 32, 4), (5, 5, 5), (8, 3, 8), (7, 28, 3)])
def test_layer_map_properties(ls, lt, n):
    m = default_layer_map(ls, lt, n)
    assert m == sorted(set(m)) and len(m) == min(n, ls)
    assert m[-1] == (ls, lt)
    assert all(1 <= s <= ls and 1 <= t <= lt for s, t in m)
    assert all(t == max(1, int(s * lt / ls + 0.5)) for s, t in m)


def test_layer_map_rejects_nonsense():
    with pytest.raises(ValueError):
        default_layer_map(2, 2, 0)
    with pytest.raises(ValueError):
        default_layer_map(0, 2, 1)


def _states(m, dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, d, generator=g) for d in dims]


def test_cosine_loss_is_zero_when_projection_matches_teacher():
    proj = FeatureProjectors(16, 16, [(1, 2), (2, 4)])
    with torch.no_grad():
        for lin in proj.proj:
            lin.weight.copy_(torch.eye(16))
    s = _states(5, [16, 16])
    phi = proj(s, [x * 3.0 for x in s], kind="cosine")  # cosine is scale-free
    assert phi.shape == (5,)
    torch.testing.assert_close(phi, torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(proj(s, [x.clone() for x in s], kind="mse"), torch.zeros(5))


def test_values_match_naive_formulas():
    proj = FeatureProjectors(8, 12, [(1, 3), (2, 6)])
    s, t = _states(7, [8, 8]), _states(7, [12, 12], seed=1)
    ws = [x @ lin.weight.T for x, lin in zip(s, proj.proj)]
    cos = sum(1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)) for a, b in zip(ws, t))
    mse = sum(((a - b) ** 2).mean(-1) for a, b in zip(ws, t))
    torch.testing.assert_close(proj(s, t, kind="cosine"), cos)
    torch.testing.assert_close(proj(s, t, kind="mse"), mse)


def test_orthogonal_init_preserves_norm():
    proj = FeatureProjectors(8, 12, [(2, 4)])
    x = _states(4, [8])[0]
    torch.testing.assert_close((x @ proj.proj[0].weight.T).norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_gradients_reach_projector_and_student_not_teacher(kind):
    proj = FeatureProjectors(8, 12, [(1, 3), (2, 6)])
    s = [x.requires_grad_(True) for x in _states(6, [8, 8])]
    with torch.inference_mode():  # teacher features come from an inference-mode forward
        t = [x * 1.0 for x in _states(6, [12, 12], seed=1)]
    phi = proj(s, t, kind=kind)
    assert phi.dtype == torch.float32
    phi.sum().backward()
    assert all(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in proj.proj)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(not x.requires_grad and x.grad is None for x in t)


def test_teacher_requiring_grad_gets_none():
    proj = FeatureProjectors(8, 12, [(2, 6)])
    s, t = _states(3, [8]), [x.requires_grad_(True) for x in _states(3, [12], seed=1)]
    proj(s, t).sum().backward()
    assert t[0].grad is None


def test_bf16_states_computed_in_fp32():
    proj = FeatureProjectors(8, 12, [(2, 6)])
    s, t = _states(3, [8]), _states(3, [12], seed=1)
    phi = proj([x.bfloat16() for x in s], [x.bfloat16() for x in t], kind="mse")
    assert phi.dtype == torch.float32


def test_unknown_kind_and_wrong_count_are_refused():
    proj = FeatureProjectors(8, 12, [(1, 3), (2, 6)])
    s, t = _states(3, [8, 8]), _states(3, [12, 12])
    with pytest.raises(ValueError) as e:
        proj(s, t, kind="l1")
    assert "cosine" in str(e.value) and "mse" in str(e.value)
    with pytest.raises(ValueError, match="expected 2"):
        proj(s[:1], t[:1])
