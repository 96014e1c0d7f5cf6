"""Document masks (dataset.document_masks): positions restart after each EOS, attention stays inside a
document, and a packed block then gives every document exactly the hidden states it has when run alone."""

from __future__ import annotations

import pytest
import torch
from conftest import egad, read_jsonl
from transformers import AutoModelForCausalLM, LlamaConfig

from egad_cli.errors import UserError
from egad_cli.models import documents

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

EOS = 0


def test_positions_and_mask_of_a_block():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 9, EOS, 4]])  # documents [0..2], [3..6], [7]
    out = documents.document_inputs(ids, EOS, "sdpa")
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    mask = out["attention_mask"][0, 0]  # [L, L] bool
    doc = [0, 0, 0, 1, 1, 1, 1, 2]
    naive = torch.tensor([[j <= i and doc[i] == doc[j] for j in range(8)] for i in range(8)])
    assert torch.equal(mask, naive)
    eager = documents.document_inputs(ids, EOS, "eager")["attention_mask"][0, 0]
    assert torch.equal(eager == 0, naive) and bool((eager[~naive] < -1e30).all())
    assert set(documents.document_inputs(ids, EOS, "flash_attention_2")) == {"position_ids"}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_document_of_a_block_sees_what_it_sees_alone(attention):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=61)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.set_attn_implementation(attention)
    ids = torch.randint(1, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[0, 3], ids[0, 8], ids[1, 6] = EOS, EOS, EOS  # row 0: [0..3] [4..8] [9..11]; row 1: [0..6] [7..11]
    documents.enable(model, EOS)
    with torch.no_grad():
        packed = documents.base_forward(model, ids).last_hidden_state  # [2, 12, 32]
        for row, spans in ((0, [(0, 4), (4, 9), (9, 12)]), (1, [(0, 7), (7, 12)])):
            for a, b in spans:
                alone = model.base_model(input_ids=ids[row:row + 1, a:b], use_cache=False).last_hidden_state
                torch.testing.assert_close(packed[row:row + 1, a:b], alone, rtol=1e-5, atol=1e-5)
        # and without the masks, the second document does see the first
        setattr(model, documents._EOS_ATTR, None)
        plain = documents.base_forward(model, ids).last_hidden_state
    assert not torch.allclose(plain[0, 4:9], packed[0, 4:9], atol=1e-3)


def test_a_tokenizer_without_eos_is_refused():
    with pytest.raises(UserError, match="dataset.document_masks"):
        documents.enable(torch.nn.Linear(1, 1), None)


def test_distill_with_document_masks_end_to_end(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(200):  # documents of ~12 byte tokens: a block of 32 holds several
        (corpus / f"{i:03d}.txt").write_text(f"doc {i} says {i * 7 % 13}")
    rows = {}
    for masks in ("false", "true"):
        run = tmp_path / masks
        assert egad("distill", "debug=smoke", "method=egad", "trainer.max_steps=2", "trainer.log_every=1",
                    "dataset=text", f"dataset.paths=['{corpus}/*.txt']", "dataset.val_fraction=0.3",
                    f"dataset.document_masks={masks}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}") == 0
        rows[masks] = read_jsonl(run / "metrics.jsonl")
    # the documents are shorter than a block, so the masks change what the models see
    assert rows["true"][0]["loss"] != pytest.approx(rows["false"][0]["loss"], rel=1e-4)
