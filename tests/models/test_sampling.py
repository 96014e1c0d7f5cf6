"""HFSampler: plain ancestral sampling (no hidden top-k or penalties from the model's generation config),
seeded, EOS-trimmed, leaving the global RNG and the model's settings as it found them."""

from __future__ import annotations

import torch
from conftest import tiny_models, typed_config

from egad_cli.models.sampling import HFSampler


def models():
    return tiny_models(typed_config(["debug=smoke"]))


def test_the_first_token_is_a_plain_multinomial_draw_at_the_temperature():
    """The same seed, the same draw as torch.multinomial(softmax(logits / T)): no top-k (transformers' default
    is 50), no top-p, no penalty crept in — even when the model's generation config asks for them."""
    _, student, tok, _ = models()
    student.generation_config.top_k, student.generation_config.repetition_penalty = 3, 1.5
    student.generation_config.temperature = 0.1
    prompts = [torch.randint(0, 200, (6,), generator=torch.Generator().manual_seed(i)) for i in range(16)]
    sampler = HFSampler(student, eos_id=tok.eos_token_id, pad_id=None, temperature=1.7)
    got = torch.stack([c[0] for c in sampler.sample(prompts, 1, seed=11)])
    with torch.no_grad():
        logits = student(torch.stack(prompts)).logits[:, -1].float()
    torch.manual_seed(11)
    want = torch.multinomial((logits / 1.7).softmax(-1), 1).squeeze(1)
    assert torch.equal(got, want)
    assert student.generation_config.top_k == 3  # the model's own settings are back


def test_sampling_is_seeded_and_leaves_the_global_rng_alone():
    _, student, tok, _ = models()
    sampler = HFSampler(student, tok.eos_token_id, None)
    prompts = [torch.arange(5), torch.arange(3)]  # different lengths: left-padded together
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = sampler.sample(prompts, 8, seed=3)
    assert torch.equal(torch.rand(1), before)  # the global stream did not move
    b = sampler.sample(prompts, 8, seed=3)
    c = sampler.sample(prompts, 8, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    assert student.training  # back in the mode it was in


def test_a_continuation_ends_at_its_first_eos():
    _, student, tok, _ = models()
    eos = tok.eos_token_id
    with torch.no_grad():  # make EOS the likeliest token by far after a few steps' worth of randomness
        student.get_output_embeddings().weight[eos] *= 0
        student.get_output_embeddings().bias = None
    sampler = HFSampler(student, eos, None, temperature=0.05)
    outs = sampler.sample([torch.arange(4)] * 8, 10, seed=0)
    assert all(1 <= len(o) <= 10 for o in outs)
    for o in outs:
        hits = (o == eos).nonzero()
        assert len(hits) == 0 or int(hits[0]) == len(o) - 1  # nothing after the first EOS
