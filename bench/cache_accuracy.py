"""How close each teacher-cache format is to the live teacher, per divergence and temperature.

Real SmolLM2 teacher logits over the embedded corpus and a student (the random `tiny` one, or --student
DIR, e.g. a distilled student/). For every registered per-entry divergence and τ ∈ {0.5, 1, 2}, against
the live full-vocabulary loss Σ τ² D / n and its gradient w.r.t. the student logits:

* sampled (the default format, ``losses.sampled``; each --config HEADxDRAWS): the *bias*, from the mean
  of the estimator over --draws independent draws (the estimator is linear in its weights, so the mean
  of R estimates is one evaluation over the R draws' slots with their weights / R): relative loss
  error and gradient cosine; and the *noise*, the median over --single draws of one draw's gradient
  cosine and loss error;
* topk (``kind=topk``, k = 48 + the tail bucket): its deterministic error and cosine;
* for the losses a sampled cache serves bucketed (``LossConfig.TEACHER_WEIGHTED`` False: reverse KL, JSD, skew
  reverse KL, TVD): the bucketed view of each single draw (``TeacherSampled.bucketed``), the error and cosine
  of their mean and the median single-draw cosine.

Values are rounded to fp16 as the cache stores them (log-probs, tail sums). Also the bytes per token of
each format (without dual-branch states). Usage:
    python bench/cache_accuracy.py [--blocks 4] [--student DIR] [--draws 256] [--single 16] [--configs 4x16,1x19]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from hydra import compose, initialize_config_dir

from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.config.policies import LOSSES
from egad_cli.data import build_splits
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.losses.cached import DEFAULT_EXPONENTS, tail_of
from egad_cli.losses.sampled import TeacherSampled, draw_from_tail, importance_weights
from egad_cli.models import load_models

TAUS = (0.5, 1.0, 2.0)
TOPK = 48


def bytes_per_token(kind: str, k: int, draws: int, vocab: int, n_exponents: int = len(DEFAULT_EXPONENTS),
                    n_entropies: int = 2) -> float:
    """A cache's shard bytes per predicting token (128-token blocks, fp16 values, ids uint16 when V ≤ 65,536):
    the head's log-probs and ids, the tail sums, the exact entropies (fp32), the block's ids (int32) and mask,
    and for a sampled cache each draw slot's id, count (uint8) and log-prob."""
    id_bytes = 2 if vocab <= 65_536 else 4
    per = k * (2 + id_bytes) + 2 * n_exponents + 4 * n_entropies + 5 * 128 / 127
    return per + (draws * (id_bytes + 1 + 2) if kind == "sampled" else 0)


def fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def sampled_draw(head, tail, logp, draws: int, seed: int, b: float) -> TeacherSampled:
    """One independent draw of `draws` ids per token from the tail (r ∝ p^b: tail holds (p/m)^b), stored
    values rounded as the cache does."""
    g = torch.Generator().manual_seed(seed)
    ids, counts = draw_from_tail(tail, torch.rand(tail.shape[0], draws, generator=g))
    sample_logp = fp16(logp.gather(-1, ids).masked_fill(counts == 0, 0.0))
    return TeacherSampled(head, ids, counts.float(), sample_logp, draws, b)


def mean_of_draws(rows: list[TeacherSampled]) -> TeacherSampled:
    """The average of the draws' estimators, as one: every draw's slots side by side, weights / R."""
    weights = torch.cat([importance_weights(r) for r in rows], dim=-1) / len(rows)
    cat = lambda name: torch.cat([getattr(r, name) for r in rows], dim=-1)
    return TeacherSampled(rows[0].head, cat("sample_ids"), cat("sample_counts"), cat("sample_logp"),
                          rows[0].draws, rows[0].draw_exponent, weights)


def loss_and_grad(rows, s_base: torch.Tensor, tau: torch.Tensor, fn) -> tuple[float, torch.Tensor]:
    s = s_base.clone().requires_grad_(True)
    value = (tau**2 * rows.divergence(s, tau, fn)).mean()
    (g,) = torch.autograd.grad(value, s)
    return value.item(), g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--student", default=None, help="a transformers student dir (default: the random tiny student)")
    ap.add_argument("--draws", type=int, default=256, help="independent draws averaged for the bias")
    ap.add_argument("--single", type=int, default=16, help="single draws whose median error/cosine is reported")
    ap.add_argument("--configs", default="4x16", help="sampled formats HEADxDRAWS, comma-separated")
    ap.add_argument("--estimator", default="ht", choices=("ht", "hh"),
                    help="ht: Horvitz-Thompson over the distinct ids (egad's); hh: Hansen-Hurwitz, counts / N")
    args = ap.parse_args()
    if args.estimator == "hh":
        import egad_cli.losses.sampled as sampled_module

        def hansen_hurwitz(rows):
            one = int(torch.nonzero(rows.head.exponents == 1.0)[0])
            w = rows.sample_counts / rows.draws * torch.exp(rows.head.log_tail[:, one, None] - rows.sample_logp)
            return torch.where(rows.sample_counts > 0, w, 0.0)

        sampled_module.importance_weights = hansen_hurwitz
        globals()["importance_weights"] = hansen_hurwitz
    register_schemas()
    # fp32: the live reference is the exact distribution (auto would be bf16 on a CPU with native bf16)
    overrides = ["run_dir=/tmp/egad-bench", "trainer.precision=fp32"]
    if args.student:
        overrides += ["student=hf", f"student.path={args.student}"]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("distill", overrides=overrides))
    runtime = resolve_runtime(cfg.trainer)
    teacher, student, tok, vocab = load_models(cfg, runtime)
    data = build_splits(cfg.dataset, tok, cache_dir(cfg.cache_dir)).train
    ids = data.ids[: args.blocks].to(runtime.device)
    valid = data.mask[: args.blocks, 1:].reshape(-1)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits[:, :-1, :vocab].reshape(-1, vocab).float()[valid]
        s_base = student(input_ids=ids).logits[:, :-1, :vocab].reshape(-1, vocab).float()[valid]
    logp = torch.log_softmax(t_logits, dim=-1)
    n = logp.shape[0]
    # HEADxDRAWS[@T]: T the draws' temperature (default 1: the teacher's own distribution)
    configs = [(int(c.split("x")[0]), int(c.split("x")[1].split("@")[0]), float(c.split("@")[1]) if "@" in c else 1.0)
               for c in args.configs.split(",")]
    print(f"cache accuracy: SmolLM2 teacher, {'student ' + args.student if args.student else 'random tiny student'}, "
          f"{n} tokens, V = {vocab}; bias = mean of {args.draws} draws, noise = median of {args.single} single "
          f"draws; values in fp16 as stored")
    print("bytes/token: " + ", ".join(
        [f"sampled {k}x{d}: {bytes_per_token('sampled', k, d, vocab):.0f}" for k, d, _ in configs]
        + [f"topk k={TOPK}: {bytes_per_token('topk', TOPK, 0, vocab):.0f}"]))

    formats = {}
    for k, d, temp in configs:
        head, tail = tail_of(logp, k)
        head.logp, head.log_tail = fp16(head.logp), fp16(head.log_tail)
        tail = tail.pow_(1 / temp)
        draws = [sampled_draw(head, tail, logp, d, seed, 1 / temp) for seed in range(max(args.draws, args.single))]
        formats[f"{k}x{d}@{temp:g}"] = (mean_of_draws(draws[: args.draws]), draws[: args.single])
        del tail
    top, _ = tail_of(logp, TOPK)
    top.logp, top.log_tail = fp16(top.logp), fp16(top.log_tail)

    header = f"{'divergence':<16} {'tau':>4} "
    header += " ".join(f"{name + ' bias err':>16} {'cos':>9} {'1-draw err':>10} {'1-draw cos':>10}" for name in formats)
    print(header + f" {'topk48 err':>11} {'cos':>9}")
    for name in LOSSES.names():
        node = LOSSES[name]()
        if not node.PER_ENTRY:
            print(f"{name:<16} (not a per-entry sum: no unbiased estimate; a sampled cache serves it bucketed)")
            continue
        fn = node.divergence()
        for tau_value in TAUS:
            tau = torch.full((n,), tau_value)
            s = s_base.clone().requires_grad_(True)
            live = (tau**2 * fn(torch.log_softmax(t_logits / tau_value, -1), torch.log_softmax(s / tau_value, -1))).mean()
            (g_live,) = torch.autograd.grad(live, s)
            live_value = live.item()

            def err_cos(value: float, g: torch.Tensor, live=live_value, g_live=g_live) -> tuple[float, float]:
                cos = torch.nn.functional.cosine_similarity(g.double().flatten(), g_live.double().flatten(), dim=0)
                return (value - live) / max(abs(live), 1e-12), cos.item()

            cells = []
            for mean_rows, singles in formats.values():
                bias_err, bias_cos = err_cos(*loss_and_grad(mean_rows, s_base, tau, fn))
                one = [err_cos(*loss_and_grad(r, s_base, tau, fn)) for r in singles]
                cells.append(f"{bias_err:>+16.2e} {bias_cos:>9.6f} {statistics.median(abs(e) for e, _ in one):>10.2e} "
                             f"{statistics.median(c for _, c in one):>10.4f}")
            t_err, t_cos = err_cos(*loss_and_grad(top, s_base, tau, fn))
            line = f"{name:<16} {tau_value:>4g} " + " ".join(cells) + f" {t_err:>+11.2e} {t_cos:>9.5f}"
            if not node.TEACHER_WEIGHTED:  # what training reads for these losses: the bucketed view of each draw
                for _, singles in formats.values():
                    pairs = [loss_and_grad(r.bucketed(), s_base, tau, fn) for r in singles]
                    one = [err_cos(v, g) for v, g in pairs]
                    mean_err, mean_cos = err_cos(statistics.mean(v for v, _ in pairs),
                                                 torch.stack([g for _, g in pairs]).mean(dim=0))
                    line += (f"  bucketed: mean of {len(pairs)} err {mean_err:+.2e} cos {mean_cos:.4f}, 1-draw cos "
                             f"{statistics.median(c for _, c in one):.4f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
