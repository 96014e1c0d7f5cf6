"""Greedy generations for eyeballing a student next to its teacher."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int, device: torch.device) -> str:
    """The greedy continuation of `prompt` (the new text only), stopping at EOS or max_new_tokens."""
    if max_new_tokens <= 0:
        return ""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.eos_token_id]], device=device)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else tokenizer.eos_token_id)
    model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def side_by_side(teacher, student, tokenizer, prompts: list[str], max_new_tokens: int, device: torch.device,
                 progress=None) -> list[dict]:
    """[{prompt, teacher, student}] for each prompt; `progress` is called after each prompt."""
    rows = []
    for prompt in prompts:
        rows.append({"prompt": prompt, "teacher": greedy(teacher, tokenizer, prompt, max_new_tokens, device),
                     "student": greedy(student, tokenizer, prompt, max_new_tokens, device)})
        if progress is not None:
            progress()
    return rows
