"""Teacher and student must share the tokenizer; padded embedding rows are sliced away."""

from __future__ import annotations

from egad_cli.errors import UserError


def tokenizer_fingerprint(tokenizer) -> dict[str, int]:
    return dict(tokenizer.get_vocab())


def same_vocabulary(t_tok, s_tok) -> bool:
    """Whether two tokenizers map the same strings to the same ids (padding rows aside)."""
    return tokenizer_fingerprint(t_tok) == tokenizer_fingerprint(s_tok)


def check_shared_vocab(teacher, student, t_tok, s_tok, *, student_key: str = "student") -> int:
    """Return V, the real shared vocabulary size both models' logits are sliced to.

    A padded vocabulary (same tokenizer, embedding rows rounded up) is fine; different
    tokenizers are refused, since per-token distributions over different vocabularies
    cannot be compared.
    """
    t_vocab, s_vocab = tokenizer_fingerprint(t_tok), tokenizer_fingerprint(s_tok)
    if t_vocab != s_vocab:
        differing = len(set(t_vocab.items()) ^ set(s_vocab.items()))
        raise UserError(
            f"{student_key}: the student's tokenizer differs from the teacher's ({len(s_vocab)} vs {len(t_vocab)} "
            f"tokens, {differing} entries differ). This command needs one shared vocabulary: use "
            f"student=tiny/small/from_teacher (built on the teacher's tokenizer) or a student trained with it; "
            f"`egad distill` with the live teacher (no teacher_cache) distils across tokenizers.")
    vocab = len(t_tok)
    if teacher is not None:  # None: a teacher cache, whose rows were checked when it was written
        check_head_rows(teacher, vocab, "teacher")
    check_head_rows(student, vocab, student_key)
    return vocab


def check_head_rows(model, vocab: int, name: str) -> None:
    """The lm_head must cover the tokenizer (extra padded rows are fine: they are sliced away)."""
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise UserError(f"{name}: lm_head has {rows} rows but the tokenizer has {vocab} tokens; "
                        f"the checkpoint and its tokenizer do not match.")
