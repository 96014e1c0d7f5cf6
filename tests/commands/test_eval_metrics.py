"""Metric functions of eval / inspect-entropy / report against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from egad_cli.commands.sweep import Run, differing_overrides, parse_overrides, sort_runs
from egad_cli.config.policies import (
    DualBranchConfig,
    LinearCurriculumConfig,
    LogitsOnlyBranchConfig,
    NormalizedDifficultyConfig,
    RankDifficultyConfig,
)
from egad_cli.evaluation.entropy import histogram, position_profile, quantiles, thresholds, token_ranking
from egad_cli.evaluation.metrics import (
    by_entropy_bucket,
    calibration_bins,
    expected_calibration_error,
    pair_summary,
    perplexity,
    quantile_buckets,
    token_metrics,
)
from egad_cli.evaluation.passes import spread_blocks
from egad_cli.ui.tables import fmt, markdown_table


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_perplexity_is_exp_mean_nll():
    assert perplexity(t(math.log(2), math.log(8))) == pytest.approx(4.0)  # exp((ln 2 + ln 8) / 2) = 4
    assert perplexity(t(0.0, 0.0)) == pytest.approx(1.0)
    assert math.isnan(perplexity(t()))


def test_ece_hand_computed():
    # 15 bins: 0.95 -> bin 14, 0.55 -> bin 8, 0.25 -> bin 3.
    # |0.5 - 0.95|·2/4 + |1 - 0.55|·1/4 + |0 - 0.25|·1/4 = 0.225 + 0.1125 + 0.0625 = 0.4
    conf, correct = t(0.95, 0.95, 0.55, 0.25), t(1, 0, 1, 0)
    assert expected_calibration_error(conf, correct, 15) == pytest.approx(0.4)
    # one bin: |mean acc - mean conf| = |0.5 - 0.675|
    assert expected_calibration_error(conf, correct, 1) == pytest.approx(0.175)
    bins = calibration_bins(conf, correct, 15)
    assert [b["n"] for b in bins if b["n"]] == [1, 1, 2]
    assert bins[14]["accuracy"] == pytest.approx(0.5) and bins[14]["confidence"] == pytest.approx(0.95)


def test_ece_bins_are_right_closed_and_calibrated_is_zero():
    bins = calibration_bins(t(0.0, 0.25, 0.2501, 1.0), t(0, 0, 0, 1), 4)   # edges exact in float32
    assert [b["n"] for b in bins] == [2, 1, 0, 1]   # 0 and 0.25 in (0, 0.25]; 0.2501 in (0.25, 0.5]; 1.0 last
    assert expected_calibration_error(t(0.5, 0.5, 0.5, 0.5), t(1, 0, 1, 0)) == pytest.approx(0.0)
    assert expected_calibration_error(t(1.0, 1.0), t(1, 1)) == pytest.approx(0.0)


def test_quantile_buckets_equal_counts_even_with_ties():
    assert torch.bincount(quantile_buckets(torch.zeros(10), 5)).tolist() == [2, 2, 2, 2, 2]
    b = quantile_buckets(t(5, 1, 4, 2, 3), 5)
    assert b.tolist() == [4, 0, 3, 1, 2]


def test_identical_logits_give_zero_kl_and_full_agreement():
    logits = torch.randn(50, 17, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 17, (50,), generator=torch.Generator().manual_seed(1))
    s = pair_summary(token_metrics(logits, logits.clone(), targets))
    assert s["kl_forward"] == pytest.approx(0.0, abs=1e-6) and s["kl_reverse"] == pytest.approx(0.0, abs=1e-6)
    assert s["top1_agreement"] == 1.0
    assert s["ppl_student"] == pytest.approx(s["ppl_teacher"])
    assert s["n_tokens"] == 50


def test_pair_summary_hand_computed():
    # teacher certain of token 0; student uniform over 2 tokens; label 0.
    big = 30.0
    m = token_metrics(torch.tensor([[big, -big]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    s = pair_summary(m)
    assert s["kl_forward"] == pytest.approx(math.log(2), abs=1e-5)       # Σ p log p/q = log 1/0.5
    assert s["ppl_student"] == pytest.approx(2.0, abs=1e-4)
    assert s["ppl_teacher"] == pytest.approx(1.0, abs=1e-4)
    assert s["ece"] == pytest.approx(0.5, abs=1e-5)                       # confidence 0.5, correct (argmax 0)
    assert s["top1_agreement"] == 1.0


def test_by_entropy_bucket_orders_by_teacher_entropy():
    n = 20
    m = {"entropy_teacher": torch.arange(n, dtype=torch.float32).flip(0),
         "kl_forward": torch.arange(n).float(),
         "kl_reverse": torch.zeros(n), "nll_student": torch.zeros(n), "nll_teacher": torch.zeros(n),
         "top1_agree": torch.ones(n), "confidence": torch.ones(n), "correct": torch.ones(n),
         "entropy_student": torch.zeros(n)}
    rows = by_entropy_bucket(m, 10)
    assert [r["n_tokens"] for r in rows] == [2] * 10
    assert (rows[0]["entropy_lo"], rows[0]["entropy_hi"]) == (0.0, 1.0)
    assert (rows[-1]["entropy_lo"], rows[-1]["entropy_hi"]) == (18.0, 19.0)
    assert rows[0]["kl_forward"] == pytest.approx(18.5)   # entropy 0, 1 sit at kl 19, 18
    assert rows[-1]["kl_forward"] == pytest.approx(0.5)


def test_histogram_and_quantiles():
    edges, counts = histogram(t(0.1, 0.2, 1.4, 2.0), bins=4, hi=2.0)
    assert edges == [0.0, 0.5, 1.0, 1.5, 2.0] and counts == [2, 0, 1, 1]   # the top edge is in the last bin
    edges, counts = histogram(t(0.1, 2.2), bins=5)
    assert edges[-1] == 2.5 and sum(counts) == 2                          # hi rounded up to 0.5 nats
    q = quantiles(torch.arange(101, dtype=torch.float32))
    assert (q["p50"], q["p1"], q["p99"], q["min"], q["max"]) == (50.0, 1.0, 99.0, 0.0, 100.0)


def test_thresholds_hand_computed():
    H = torch.arange(10, dtype=torch.float32)         # rank u = i / 9
    cur = LinearCurriculumConfig(mode="hard", rho=1.0, c0=0.3)
    th = thresholds(H, 100, RankDifficultyConfig(), cur, DualBranchConfig(q=0.3))
    assert th["hard"]["tokens"] == 3 and th["hard"]["entropy_min"] == 7.0 and th["hard"]["active"]
    g0, g_half, g1 = th["gates"]
    assert g0["gate"] == pytest.approx(0.3) and g0["entropy_max"] == 2.0 and g0["share"] == pytest.approx(0.3)
    assert g_half["gate"] == pytest.approx(0.65) and g_half["entropy_max"] == 5.0   # u ≤ 0.65: i ≤ 5
    assert g1["share"] == 1.0
    assert g0["soft_weight_ratio"] == pytest.approx(math.exp(-2))
    assert g1["soft_weight_ratio"] == pytest.approx(math.exp(2))
    normalized = thresholds(H, 100, NormalizedDifficultyConfig(), cur, LogitsOnlyBranchConfig())
    assert normalized["gates"][0]["entropy_max"] == 1.0    # u = H / ln 100 ≤ 0.3: H ≤ 1.38
    assert not normalized["hard"]["active"]


def test_token_ranking_and_position_profile():
    H = t(1, 1, 1, 3, 3, 5, 9)
    targets = torch.tensor([5, 5, 5, 7, 7, 7, 8])
    high, low = token_ranking(H, targets, min_count=3, top=5)
    assert [e["token_id"] for e in high] == [7, 5] and [e["token_id"] for e in low] == [5, 7]
    assert high[0]["mean"] == pytest.approx(11 / 3) and high[0]["count"] == 3
    assert high[0]["example"] in (3, 4, 5)
    rows = position_profile(torch.tensor([0, 1, 2, 3, 4, 5]), {"teacher": t(1, 1, 2, 2, 3, 3)}, 3, 6)
    assert [r["positions"] for r in rows] == [[0, 1], [2, 3], [4, 5]]
    assert [r["teacher"] for r in rows] == [1.0, 2.0, 3.0] and [r["count"] for r in rows] == [2, 2, 2]


def test_spread_blocks_samples_the_whole_split():
    from egad_cli.data.packing import Packed

    data = Packed(ids=torch.arange(100).view(10, 10), mask=torch.ones(10, 10, dtype=torch.bool))
    assert spread_blocks(data, 30).ids[:, 0].tolist() == [0, 40, 90]   # linspace(0, 9, 3) rounded
    assert len(spread_blocks(data, 0)) == 10 and len(spread_blocks(data, 5)) == 1


def test_sweep_helpers(tmp_path):
    assert parse_overrides(["method=kd", "+x.y=1", "~z", "a=b=c"]) == {"method": "kd", "x.y": "1", "z": "~",
                                                                       "a": "b=c"}
    runs = [Run(tmp_path, "a", 0, "done", {"method": "kd", "debug": "smoke"}, {"kl_after": 2.0}),
            Run(tmp_path, "b", 1, "done", {"method": "egad", "debug": "smoke"}, {"kl_after": 1.0}),
            Run(tmp_path, "c", 2, "failed", {"method": "rkl", "debug": "smoke"}, {})]
    assert differing_overrides(runs) == (["method"], {"debug": "smoke"})
    assert [r.name for r in sort_runs(runs, "kl_after")] == ["b", "a", "c"]          # missing values last
    assert [r.name for r in sort_runs(runs, "kl_after", "desc")] == ["a", "b", "c"]
    assert [r.name for r in sort_runs(runs, None)] == ["a", "b", "c"]
    assert [r.name for r in sort_runs(runs, "method")] == ["b", "a", "c"]          # text sorts alphabetically


def test_fmt_and_markdown():
    assert [fmt(None), fmt(1234), fmt(1.28), fmt(843.95), fmt(0.02804), fmt(0.0), fmt(float("nan"))] == [
        "—", "1,234", "1.280", "844.0", "0.0280", "0.0000", "nan"]
    md = markdown_table(["job", "kl"], [[0, 1.5], [1, None]])
    assert md.splitlines() == ["| job | kl |", "|---:|---:|", "| 0 | 1.500 |", "| 1 | — |"]
