"""The cross-tokenizer logit loss: identity with the same-tokenizer loss, a naive fp64 reference, chunking, and
the token bytes / vocabulary map it is built on."""

import pytest
import torch
from conftest import divergence
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from egad_cli.config.policies import LOSSES
from egad_cli.losses.chunked import chunked_distill_loss
from egad_cli.losses.cross_vocab import VocabMap, cross_vocab_loss, vocab_map
from egad_cli.models.student_tokenizer import train_bpe
from egad_cli.models.token_bytes import byte_lengths, token_bytes
from egad_cli.models.tokenizers import byte_tokenizer

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

NAMES = sorted(LOSSES)
N, VT, VS, DS, DT = 11, 37, 29, 8, 12
# fp32 logits, log_softmax over ≤ 38 entries and a sum over ≤ 11 tokens of O(1) terms: a few hundred ulp (1.2e-7)
# at most between two summation orders; 1e-6 is the bar for the identity, 1e-5 against an fp64 reference.
IDENTITY_TOL = {"rtol": 1e-6, "atol": 1e-6}
REF_TOL = {"rtol": 1e-5, "atol": 1e-5}


def _problem(vs=VS, vt=VT, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(N, DS, generator=g).requires_grad_(True)
    s_head = (0.5 * torch.randn(vs, DS, generator=g)).requires_grad_(True)
    t_hidden, t_head = torch.randn(N, DT, generator=g), 0.5 * torch.randn(vt, DT, generator=g)
    tau = 0.5 + 1.5 * torch.rand(N, generator=g)  # non-uniform, in [0.5, 2]
    coef = torch.rand(N, generator=g) * 2
    coef[[0, 4, 10]] = 0.0  # pairs that contribute nothing (incl. the first and last)
    return s_hidden, s_head, t_hidden, t_head, tau, coef


def _a_map(seed=1, k=15) -> VocabMap:
    """K shared strings at scattered ids on both sides (not in the same order)."""
    g = torch.Generator().manual_seed(seed)
    t_ids = torch.randperm(VT, generator=g)[:k]
    s_ids = torch.randperm(VS, generator=g)[:k]
    return VocabMap(t_ids, s_ids, VT, VS)


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("name", NAMES)
def test_a_permuted_identity_map_is_the_same_tokenizer_loss(name):
    """Same vocabulary, ids in another order, through the general (non-identity) path: every divergence's value
    and gradients equal the same-tokenizer chunked loss to 1e-6."""
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem(vs=VT)
    perm = torch.randperm(VT, generator=torch.Generator().manual_seed(3))  # teacher id i is student id perm[i]
    vmap = VocabMap(torch.arange(VT), perm, VT, VT)
    fn = divergence(name, 0.3, 0.2)
    mapped, uld = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, chunk_size=4)
    # the student's head in the teacher's id order: row i of it is the student's row perm[i]
    ref, _ = chunked_distill_loss(s_hidden, s_head[perm], t_hidden, t_head, tau, coef, divergence=fn, chunk_size=4)
    torch.testing.assert_close(mapped, ref, **IDENTITY_TOL)
    assert uld.item() == 0.0  # nothing is unmapped
    for got, want in zip(_grads(mapped, s_hidden, s_head), _grads(ref, s_hidden, s_head), strict=True):
        torch.testing.assert_close(got, want, **IDENTITY_TOL)


def test_one_tokenizer_gives_the_identity_map_and_the_same_tokenizer_loss():
    tok = byte_tokenizer()
    vmap = vocab_map(tok, tok, len(tok), len(tok))
    assert vmap.identity and vmap.shared == len(tok)
    g = torch.Generator().manual_seed(0)
    s_hidden = torch.randn(N, DS, generator=g).requires_grad_(True)
    s_head = torch.randn(len(tok), DS, generator=g).requires_grad_(True)
    t_hidden, t_head = torch.randn(N, DT, generator=g), torch.randn(len(tok), DT, generator=g)
    tau, coef = torch.full((N,), 2.0), torch.rand(N, generator=g)
    fn = divergence("forward_kl")
    mapped, uld = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap)
    ref, _ = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=fn)
    torch.testing.assert_close(mapped, ref, rtol=0, atol=0)
    assert float(uld) == 0.0


def _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, top):
    """fp64, full vocabularies, written out: buckets by a loop over the map, ULD by sorting everything."""
    t_logp = torch.log_softmax((t_hidden.double() @ t_head.double().T) / tau[:, None].double(), -1)  # [N, Vt]
    s_logp = torch.log_softmax((s_hidden.double() @ s_head.double().T) / tau[:, None].double(), -1)  # [N, Vs]
    t_on = torch.zeros(vmap.t_vocab, dtype=torch.bool)
    t_on[vmap.t_ids] = True
    s_on = torch.zeros(vmap.s_vocab, dtype=torch.bool)
    s_on[vmap.s_ids] = True
    if vmap.rest_bucket:
        t_b = torch.stack([t_logp[:, i] for i in vmap.t_ids.tolist()] + [t_logp[:, ~t_on].logsumexp(-1)], 1)
        s_b = torch.stack([s_logp[:, j] for j in vmap.s_ids.tolist()] + [s_logp[:, ~s_on].logsumexp(-1)], 1)
    else:  # one side mapped whole: both over the shared strings, each conditioned on them (p / Σ_shared p)
        t_b = torch.stack([t_logp[:, i] for i in vmap.t_ids.tolist()], 1)
        s_b = torch.stack([s_logp[:, j] for j in vmap.s_ids.tolist()], 1)
        t_b, s_b = t_b - t_b.logsumexp(-1, keepdim=True), s_b - s_b.logsumexp(-1, keepdim=True)
    mapped = (coef.double() * tau.double() ** 2 * fn(t_b, s_b)).sum()
    t_rest = t_logp[:, ~t_on].exp().sort(-1, descending=True).values[:, :top]
    s_rest = s_logp[:, ~s_on].exp().sort(-1, descending=True).values[:, :top]
    width = max(t_rest.shape[1], s_rest.shape[1])
    t_rest = torch.nn.functional.pad(t_rest, (0, width - t_rest.shape[1]))
    s_rest = torch.nn.functional.pad(s_rest, (0, width - s_rest.shape[1]))
    uld = (coef.double() * (t_rest - s_rest).abs().sum(-1)).sum()
    return mapped, uld


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size,top", [(N, 256), (3, 256), (4, 5)])
def test_value_and_grads_match_a_naive_fp64_reference(name, chunk_size, top):
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem()
    vmap, fn = _a_map(), divergence(name, 0.3, 0.2)
    mapped, uld = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, uld_top=top,
                                   chunk_size=chunk_size)
    ref_m, ref_u = _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, top)
    assert mapped.dtype == uld.dtype == torch.float32
    torch.testing.assert_close(mapped.double(), ref_m, **REF_TOL)
    torch.testing.assert_close(uld.double(), ref_u, **REF_TOL)
    assert uld.item() > 0
    # different upstream weights on the two outputs: their gradients are kept apart
    got = _grads(0.7 * mapped + 1.3 * uld, s_hidden, s_head)
    want = _grads(0.7 * ref_m + 1.3 * ref_u, s_hidden, s_head)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w.double(), **REF_TOL)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("whole", ["teacher", "student"])
def test_a_vocabulary_mapped_whole_gives_finite_values_and_gradients(name, whole):
    """One side's every id is shared (e.g. the student is the teacher's tokenizer plus an added [PAD]): that side
    has no rest mass, so a rest bucket would be 0 against the other side's positive one (reverse KL inf for a
    whole teacher, forward KL inf for a whole student). Every divergence stays finite, with finite gradients, and
    equals the fp64 reference over the shared strings, the other side conditioned on them; the ULD term still
    sees the unmapped mass."""
    extra = 3  # ids only the other side has
    vt, vs = (VT, VT + extra) if whole == "teacher" else (VT + extra, VT)
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem(vs=vs, vt=vt)
    perm = torch.randperm(VT, generator=torch.Generator().manual_seed(5))  # the shared ids in another order
    vmap = VocabMap(torch.arange(VT), perm, vt, vs) if whole == "teacher" else VocabMap(perm, torch.arange(VT), vt, vs)
    assert not vmap.rest_bucket
    fn = divergence(name, 0.3, 0.2)
    mapped, uld = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, chunk_size=4)
    assert torch.isfinite(mapped) and torch.isfinite(uld) and uld.item() > 0
    ref_m, ref_u = _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, 256)
    torch.testing.assert_close(mapped.double(), ref_m, **REF_TOL)
    torch.testing.assert_close(uld.double(), ref_u, **REF_TOL)
    got = _grads(mapped + uld, s_hidden, s_head)
    for g, w in zip(got, _grads(ref_m + ref_u, s_hidden, s_head), strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w.double(), **REF_TOL)


def test_uld_weight_zero_skips_the_uld_term_and_no_grad_gives_the_same_values():
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem()
    vmap, fn = _a_map(), divergence("forward_kl")
    m1, u1 = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, uld_weight=0.0)
    assert u1.item() == 0.0
    with torch.no_grad():
        m2, u2 = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap)
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)  # the same chunks in the same order
    assert float(u2) > 0


def test_kept_teacher_logits_give_the_same_loss():
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem()
    vmap, fn = _a_map(), divergence("jsd")
    a = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap)
    b = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, fn, vmap, t_logits=t_hidden @ t_head.T)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_zero_weights_give_zero_sums_and_zero_gradients():
    s_hidden, s_head, t_hidden, t_head, tau, _ = _problem()
    mapped, uld = cross_vocab_loss(s_hidden, s_head, t_hidden, t_head, tau, torch.zeros(N),
                                   divergence("reverse_kl"), _a_map())
    assert float(mapped.detach()) == float(uld.detach()) == 0.0
    for g in _grads(mapped + uld, s_hidden, s_head):
        assert torch.isfinite(g).all() and not g.any()


def test_mismatched_shapes_are_refused():
    s_hidden, s_head, t_hidden, t_head, tau, coef = _problem()
    with pytest.raises(ValueError, match="heads have"):
        cross_vocab_loss(s_hidden, s_head[:-1], t_hidden, t_head, tau, coef, divergence("forward_kl"), _a_map())
    with pytest.raises(ValueError, match="repeated"):
        VocabMap(torch.tensor([1, 1]), torch.tensor([0, 2]), VT, VS)
    with pytest.raises(ValueError, match="must lie in"):
        VocabMap(torch.tensor([1, VT]), torch.tensor([0, 2]), VT, VS)


# --------------------------------------------------------------------------- token bytes and the map

TEXTS = ["Hello world, the cat sat.", "naïve café — 東京 😀 tabs\tand\nnewlines  two spaces", "x" * 40]


def _sentencepiece_style() -> PreTrainedTokenizerFast:
    """A Llama-2-like tokenizer built in code: ▁ for spaces, <0xNN> byte fallback, a Strip decoder."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "▁the", "▁cat", "a", "t", "▁s", "e", "H", "l", "o", "▁w", "r", "d", ",", "."]:
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("make", [byte_tokenizer, lambda: train_bpe(TEXTS * 20, 300), _sentencepiece_style],
                         ids=["bytes", "trained_bpe", "sentencepiece_style"])
def test_token_bytes_spell_the_text(make):
    tok = make()
    table = token_bytes(tok)
    assert len(table) == len(tok)
    assert table[tok.eos_token_id] is None
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        spelled = b"".join(table[i] for i in ids)
        # SentencePiece style writes the space it prepends; its decoder strips it again
        assert spelled == text.encode() or spelled == b" " + text.encode(), (text, spelled)
    lengths = byte_lengths(tok)
    assert lengths.dtype == torch.int64 and int(lengths[tok.eos_token_id]) == 0


def test_vocab_map_pairs_equal_byte_strings_and_eos():
    bpe, sp, raw = train_bpe(TEXTS * 20, 300), _sentencepiece_style(), byte_tokenizer()
    vmap = vocab_map(bpe, sp, len(bpe), len(sp))
    assert not vmap.identity
    t_b, s_b = token_bytes(bpe), token_bytes(sp)
    for i, j in zip(vmap.t_ids.tolist(), vmap.s_ids.tolist(), strict=True):
        assert t_b[i] == s_b[j] or (i == bpe.eos_token_id and j == sp.eos_token_id)
    pairs = dict(zip(vmap.t_ids.tolist(), vmap.s_ids.tolist(), strict=True))
    assert pairs[bpe.eos_token_id] == sp.eos_token_id
    assert pairs[bpe.convert_tokens_to_ids("Ġ")] == sp.convert_tokens_to_ids("▁")  # both spell b" "
    assert pairs[bpe.convert_tokens_to_ids("a")] == sp.convert_tokens_to_ids("a")
    # every one-byte token of a byte-level vocabulary has its partner among the <0xNN> of the other
    byte_map = vocab_map(raw, sp, len(raw), len(sp))
    assert byte_map.shared == 256 + 1  # 256 bytes and EOS
