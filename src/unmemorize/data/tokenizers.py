"""Tokenizers, all as Hugging Face ``PreTrainedTokenizerFast`` so they save beside a model.

* :func:`math_tokenizer` — TinyMem's 14-id character vocabulary: digits ``0``–``9`` are ids 0–9,
  ``^`` (bos) 10, ``$`` (eos) 11, the space separator 12 and padding 13.
* :func:`train_bpe_tokenizer` — a small byte-level BPE trained on a local corpus with
  ``tokenizers``, so the language variant runs on a CPU without a hub download.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MATH_BOS = "^"
MATH_EOS = "$"
MATH_SEP = " "
MATH_PAD = "<pad>"
#: Character -> id, exactly the original TinyMem vocabulary.
MATH_VOCAB: dict[str, int] = {
    **{str(d): d for d in range(10)},
    MATH_BOS: 10,
    MATH_EOS: 11,
    MATH_SEP: 12,
    MATH_PAD: 13,
}
MATH_PAD_ID = MATH_VOCAB[MATH_PAD]


def math_tokenizer() -> PreTrainedTokenizerFast:
    """The TinyMem character tokenizer: one token per character, 14 ids.

    Characters outside the vocabulary are an error at encode time (they would silently map to an
    unknown id otherwise); padding is on the right, as in training.
    """
    tok = Tokenizer(models.WordLevel(vocab=MATH_VOCAB, unk_token=MATH_PAD))
    # Every character is its own piece; the space separator is a real token, not whitespace.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=MATH_BOS,
        eos_token=MATH_EOS,
        pad_token=MATH_PAD,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    return fast


def encode_math(text: str) -> list[int]:
    """Encode a math sequence string to ids, rejecting characters outside the vocabulary."""
    try:
        return [MATH_VOCAB[ch] for ch in text]
    except KeyError as err:
        raise ValueError(
            f"character {err.args[0]!r} is not in the math vocabulary "
            "(digits, '^', '$' and spaces only)"
        ) from None


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: the corpus, as an iterable of documents.
        vocab_size: target vocabulary size, special tokens included.
        min_frequency: merges must occur at least this often.

    Returns:
        A fast tokenizer whose ``<|endoftext|>`` token serves as bos, eos and padding (GPT-2's
        convention, which the TinyMem language variant follows).
    """
    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special,
        eos_token=special,
        pad_token=special,
        clean_up_tokenization_spaces=False,
    )
