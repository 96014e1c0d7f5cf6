"""Prompts of on-policy sequences: the records' prompts in packed prompt/response data, else block prefixes."""

from __future__ import annotations

import torch

from egad_cli.data.packing import Packed
from egad_cli.data.prompts import BlockPrefix, PromptPool, prompt_source, prompt_spans


def packed(stream: list[tuple[int, bool]], block: int) -> Packed:
    ids = torch.tensor([t for t, _ in stream])
    mask = torch.tensor([m for _, m in stream])
    n = len(stream) // block * block
    return Packed(ids[:n].view(-1, block), mask[:n].view(-1, block))


def record(prompt: list[int], response: list[int]) -> list[tuple[int, bool]]:
    return [(t, False) for t in prompt] + [(t, True) for t in response]


def test_prompt_spans_are_the_whole_prompts_even_across_blocks():
    stream = record([1, 2, 3], [10, 11, 0]) + record([4, 5, 6, 7, 8], [12, 0]) + record([9], [13, 14, 0]) \
        + record([20, 21], [22])  # 20 tokens in blocks of 5; the last record is whole
    spans = prompt_spans(packed(stream, 5))
    assert [s.tolist() for s in spans] == [[1, 2, 3], [4, 5, 6, 7, 8], [9], [20, 21]]  # [4..8] straddles blocks


def test_a_prompt_cut_off_by_the_end_of_the_stream_is_left_out():
    stream = record([1, 2], [10, 0]) + [(4, False), (5, False)]  # the stream ends inside a prompt
    assert [s.tolist() for s in prompt_spans(packed(stream, 3))] == [[1, 2]]


def test_plain_text_has_no_prompts_and_uses_block_prefixes():
    data = Packed(torch.arange(24).view(3, 8), torch.ones(3, 8, dtype=torch.bool))
    assert prompt_spans(data) == []
    source = prompt_source(data, 5, seed=0)
    assert isinstance(source, BlockPrefix)
    assert source.prompt(7, data.ids[2]).tolist() == [16, 17, 18, 19, 20]


def test_the_pool_visits_every_prompt_once_a_pass_keeps_the_last_tokens_and_is_seeded():
    prompts = [torch.arange(i, i + 4) for i in range(0, 40, 4)]  # 10 prompts of 4 tokens
    pool = PromptPool(prompts, length=3, seed=1)
    first = [tuple(pool.prompt(j, torch.empty(0)).tolist()) for j in range(10)]
    assert sorted(first) == sorted(tuple(p[-3:].tolist()) for p in prompts)  # each once, cut to its last 3
    second = [tuple(pool.prompt(j, torch.empty(0)).tolist()) for j in range(10, 20)]
    assert sorted(second) == sorted(first) and second != first  # the next pass: another order
    again = PromptPool(prompts, length=3, seed=1)
    assert [tuple(again.prompt(j, torch.empty(0)).tolist()) for j in (13, 2, 5)] == [second[3], first[2], first[5]]
    assert pool.truncated == 10 and "10 prompts" in pool.describe()
