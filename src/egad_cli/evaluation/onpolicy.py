"""The on-policy metric of ``egad eval``: the teacher grades text the student writes.

Off-policy metrics score the student on the data's tokens; on-policy distillation minimises the
divergence on the student's own samples, so this is what it should lower. The student continues
held-out prompts (sampling as ``onpolicy.*``: the records' prompts for jsonl data, else the first
``onpolicy.prompt_tokens`` tokens of evenly spaced held-out blocks), then one no-grad pass scores every
sampled token: reverse KL(student ‖ teacher) — the per-token objective of on-policy distillation —, forward
KL, and the negative log-likelihood the teacher gives the student's token.
"""

from __future__ import annotations

import torch

from egad_cli.config.schema import OnPolicyConfig
from egad_cli.data.packing import Packed
from egad_cli.data.prompts import PromptPool, prompt_source
from egad_cli.engine.onpolicy import sampled_blocks, sampling_seed
from egad_cli.engine.runtime import Runtime
from egad_cli.evaluation.passes import token_pass
from egad_cli.models.sampling import HFSampler


def onpolicy_metrics(teacher, student, tokenizer, vocab: int, data: Packed, cfg: OnPolicyConfig, n_prompts: int,
                     runtime: Runtime, batch_size: int, chunk_size: int, progress: bool = False, console=None) -> dict:
    """{onpolicy_kl_reverse, onpolicy_kl_forward, onpolicy_nll_teacher, onpolicy_nll_student: means per sampled
    token; onpolicy_prompts, onpolicy_tokens, onpolicy_mean_len}."""
    block = data.ids.shape[1]
    seed = cfg.seed if cfg.seed is not None else 0
    source = prompt_source(data, cfg.prompt_len(block), seed)
    if isinstance(source, PromptPool):
        prompts = [source.prompt(j, data.ids[0]) for j in range(min(n_prompts, len(source.prompts)))]
    else:
        blocks = torch.linspace(0, len(data) - 1, min(n_prompts, len(data))).round().long()
        prompts = [source.prompt(j, data.ids[int(b)]) for j, b in enumerate(blocks)]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    sampler = HFSampler(student, eos, pad, cfg.temperature, cfg.top_p)
    new = []
    for start in range(0, len(prompts), batch_size):
        new += sampler.sample(prompts[start: start + batch_size], cfg.new_tokens(block), sampling_seed(seed, start))
    ids, mask = sampled_blocks(prompts, new, block, pad)
    values = token_pass(teacher, vocab, Packed(ids, mask), runtime, batch_size, chunk_size, student=student,
                        progress=progress, console=console, description="on-policy pass")
    n_tokens = int(values["kl_reverse"].numel())
    return {"onpolicy_kl_reverse": float(values["kl_reverse"].mean()),
            "onpolicy_kl_forward": float(values["kl_forward"].mean()),
            "onpolicy_nll_teacher": float(values["nll_teacher"].mean()),
            "onpolicy_nll_student": float(values["nll_student"].mean()),
            "onpolicy_prompts": len(prompts), "onpolicy_tokens": n_tokens,
            "onpolicy_mean_len": n_tokens / max(len(prompts), 1)}
