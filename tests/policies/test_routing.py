"""Dual-branch routing: exact hard-token sets, ties, q = 0 / 1."""

import pytest
import torch

from egad_cli.policies.routing import hard_token_mask, top_k_count

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


U = t(0.9, 0.5, 0.5, 0.5, 0.1, 1.0)
V = b(T, T, T, T, T, F)          # the invalid token has the largest u and must never be picked


def test_exact_sets_with_ties_by_index():
    assert torch.equal(hard_token_mask(U, V, 0.4), b(T, T, F, F, F, F))   # ceil(2.0) = 2
    assert torch.equal(hard_token_mask(U, V, 0.6), b(T, T, T, F, F, F))   # 3: tie 0.5 -> lower index
    assert torch.equal(hard_token_mask(U, V, 0.25), b(T, T, F, F, F, F))  # ceil(1.25) = 2
    assert torch.equal(hard_token_mask(U, V, 0.1), b(T, F, F, F, F, F))   # ceil(0.5) = 1


def test_q_zero_and_one():
    assert not hard_token_mask(U, V, 0.0).any()
    assert torch.equal(hard_token_mask(U, V, 1.0), V)


def test_count_float_tolerance():
    assert top_k_count(0.3, 10) == 3          # 0.3 * 10 = 3.0000000000000004
    assert top_k_count(0.7, 10) == 7
    assert top_k_count(0.31, 10) == 4
    assert hard_token_mask(torch.arange(10.0), torch.ones(10, dtype=torch.bool), 0.3).sum() == 3


def test_all_invalid_and_bad_q():
    assert not hard_token_mask(U, torch.zeros(6, dtype=torch.bool), 1.0).any()
    with pytest.raises(ValueError):
        hard_token_mask(U, V, 1.5)
