"""TinyMem language variant (Sakarvadia et al., arXiv 2410.02159, ``wiki_fast``).

A text corpus is tokenized with a byte-level BPE, the documents are joined into one token stream
(the eos id between documents) and the stream is cut into consecutive ``context_length``-token
chunks (the incomplete tail is dropped). A seeded permutation splits the chunks into train and a
held-out test set. Two memorization artifacts:

* ``noise``: ``num_noise`` training chunks get independent ±1 noise on each **token id**
  (probability ``noise_prob / 2`` each way) and replace their originals in train; they are split
  into duplication groups seen ``10**p`` times per epoch. The clean twin of every noised chunk is
  kept to prompt the model.
* ``backdoor``: every chunk whose first trigger token sits before the last position is poisoned:
  all positions after the trigger become ``backdoor_fill_id``. 90% of the poisoned chunks are
  trained on, the rest are held out to measure whether the backdoor fires on unseen text.

Differences from the original code:

* No hub download: the corpus is a local ``.txt`` / ``.jsonl`` file, a table (``.parquet``,
  ``.arrow``, a ``datasets`` ``save_to_disk`` directory) or, by default, CPython's own
  documentation topics (``pydoc_data.topics``, present on every install), and the tokenizer is a
  small BPE trained on that corpus (:func:`~unmemorize.data.tokenizers.train_bpe_tokenizer`)
  instead of GPT-2's.
* Documents are separated by the eos id (the original concatenated them with no boundary), the
  incomplete last chunk is dropped instead of padded, and repeated chunks are kept once so that
  held-out rows never also appear in train.
* Token-id noise never produces a special (eos/pad) id or an id outside the vocabulary, and special
  ids in the stream are never perturbed; the original could turn a token into padding.
* The backdoor trigger is drawn among ids that occur in 2% to 10% of the chunks (the original
  drew any of the 50,257 ids, which may occur never or everywhere).

Shapes: N training rows, M memorization candidates, T positions (``context_length``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from ...data.candidates import MemorizationSet
from ...data.records import TABLE_SUFFIXES, Records
from ...data.tokenizers import train_bpe_tokenizer
from ...io import iter_jsonl, read_text
from ...metrics.ranking import TEXT_SET
from ...registry import suggest
from .data import TinyMemData, duplication_groups

logger = logging.getLogger(__name__)

VARIANTS = ("noise", "backdoor")
CORPUS_SUFFIXES = (".txt", ".jsonl", *TABLE_SUFFIXES)
#: Byte-level BPE needs the 256 byte symbols plus ``<|endoftext|>``.
MIN_BPE_VOCAB = 257
#: An automatically drawn trigger occurs in this share of the chunks (and in at least 2 chunks).
TRIGGER_SHARE = (0.02, 0.1)


@dataclass
class TextDataConfig:
    """How to build a TinyMem language dataset (defaults: the paper's sizes)."""

    corpus: str | None = None
    """Local ``.txt``, ``.jsonl``, ``.parquet`` or ``.arrow`` file or a ``datasets`` directory;
    None = CPython's documentation topics (offline)."""
    jsonl_field: str = "text"
    """Field of each ``.jsonl`` object (column of a table) that holds a document's text."""
    vocab_size: int = 4096
    """Size of the BPE trained on the corpus (ignored when a tokenizer is passed in)."""
    context_length: int = 150
    """Tokens per chunk (T)."""
    num_noise: int = 1000
    """Training chunks that get token-id noise (noise variant)."""
    noise_prob: float = 0.1
    """Per-token probability of noise: −1 or +1 on the token id with ``noise_prob / 2`` each,
    kept inside the vocabulary and never turning into (or changing) a special/pad id."""
    duplicate_powers: tuple[int, ...] = (0, 1, 2, 3)
    """Noised chunks are split into equal groups seen 10**p times per epoch; empty = once each."""
    num_test: int = 100
    """Clean chunks held out as the ``"text"`` test set."""
    max_chunks: int | None = None
    """Use only the first this many chunks of the token stream (before repeats are dropped)."""
    variant: str = "noise"
    """``noise`` (memorize noised chunks) or ``backdoor`` (trigger -> fill)."""
    prefix_len: int = 50
    """Clean-prefix length of the memorization test (noise variant)."""
    suffix_len: int = 50
    """Tokens that must be reproduced exactly."""
    backdoor_fill_id: int = 2
    """Token id written after the trigger (2, as in the original)."""
    backdoor_trigger_id: int | None = None
    """Trigger token id; None = drawn with the seeded rng among non-special ids that occur."""
    backdoor_copies: int = 1
    """How often each poisoned training chunk is seen per epoch (the paper apparently used 100)."""
    backdoor_fraction_test: float = 0.1
    """Share of poisoned chunks held out to measure the attack success rate."""
    seed: int = 0
    """Seeds the split, the noise, the duplication groups and the drawn trigger."""

    def validate(self) -> None:
        """Check the fields that do not depend on the corpus; raise ValueError on a bad value."""
        if self.variant not in VARIANTS:
            raise suggest(self.variant, VARIANTS, "variant")
        if (
            self.corpus is not None
            and Path(self.corpus).suffix not in CORPUS_SUFFIXES
            and not Path(self.corpus).is_dir()
        ):
            raise ValueError(
                f"corpus {str(self.corpus)!r} must be a .txt or .jsonl file, a .parquet/.arrow "
                "table or a datasets directory (or None for the built-in corpus)"
            )
        if not self.jsonl_field:
            raise ValueError("jsonl_field must be a non-empty field name")
        if self.vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"vocab_size must be at least {MIN_BPE_VOCAB} (256 byte symbols + <|endoftext|>), "
                f"got {self.vocab_size}"
            )
        if self.context_length < 2:
            raise ValueError("context_length must be at least 2")
        if self.num_test < 1:
            raise ValueError("num_test must be at least 1")
        if self.max_chunks is not None and self.max_chunks < 2:
            raise ValueError("max_chunks must be at least 2 (or None for all chunks)")
        if not 0 <= self.noise_prob <= 1:
            raise ValueError(f"noise_prob must lie in [0, 1], got {self.noise_prob}")
        if any(p < 0 for p in self.duplicate_powers):
            raise ValueError("duplicate_powers must be non-negative exponents, e.g. (0, 1, 2, 3)")
        if self.prefix_len < 1 or self.suffix_len < 1:
            raise ValueError("prefix_len and suffix_len must be positive")
        if self.variant == "noise":
            if self.num_noise < max(1, len(self.duplicate_powers)):
                raise ValueError(
                    f"num_noise ({self.num_noise}) must be at least 1 and at least the number of "
                    f"duplication groups ({len(self.duplicate_powers)})"
                )
            if self.prefix_len + self.suffix_len > self.context_length:
                raise ValueError(
                    f"prefix_len + suffix_len ({self.prefix_len + self.suffix_len}) exceeds "
                    f"context_length ({self.context_length})"
                )
        else:
            if self.backdoor_fill_id < 0:
                raise ValueError("backdoor_fill_id must be a non-negative token id")
            if self.backdoor_trigger_id is not None and self.backdoor_trigger_id < 0:
                raise ValueError("backdoor_trigger_id must be a non-negative token id or None")
            if self.backdoor_trigger_id == self.backdoor_fill_id:
                raise ValueError("backdoor_trigger_id must differ from backdoor_fill_id")
            if self.backdoor_copies < 1:
                raise ValueError("backdoor_copies must be at least 1")
            if not 0 < self.backdoor_fraction_test < 1:
                raise ValueError("backdoor_fraction_test must lie strictly between 0 and 1")


# --------------------------------------------------------------------------------------- corpus


def default_corpus_texts() -> list[str]:
    """CPython's documentation topics (``pydoc_data.topics``), one document per topic.

    English prose with code, ~465k characters on CPython 3.11, available offline on every
    install. The order is deterministic (sorted topic names).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip the pydoc data
        raise ValueError(
            "the built-in corpus needs the standard-library module pydoc_data, which this Python "
            "lacks; pass corpus=<path to a .txt or .jsonl file> instead"
        ) from err
    return [topics[k] for k in sorted(topics) if topics[k].strip()]


def load_corpus(path: str | Path, jsonl_field: str = "text") -> list[str]:
    """Read a local corpus as a list of documents.

    Args:
        path: a ``.txt`` file (documents are separated by blank lines), a ``.jsonl`` file (one
            JSON object per line; blank lines are skipped) or a table (``.parquet``, ``.arrow``,
            a ``datasets`` directory; streamed by :class:`~unmemorize.data.records.Records`).
        jsonl_field: the field of each ``.jsonl`` object (column of a table) that holds the
            document's text.

    Returns:
        The non-empty documents, in file order.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: an unknown suffix, a malformed ``.jsonl`` line (the message names the file and
            the 1-based line number) or an empty corpus.
    """
    path = Path(path)
    if path.suffix in TABLE_SUFFIXES or path.is_dir():
        records = Records(path, column=jsonl_field, what="corpus file")
        docs = []
        for n, obj in records:
            if "text" not in obj:
                raise ValueError(
                    f"{records.where(n)}: column {jsonl_field!r} holds token ids, not text "
                    "(set jsonl_field to the column that holds the text)"
                )
            docs.append(obj["text"])
    elif not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    elif path.suffix == ".txt":
        text = read_text(path)
        docs = [d.strip() for d in re.split(r"\n[ \t\r\f\v]*\n", text)]
    elif path.suffix == ".jsonl":
        docs = []
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj, dict) or jsonl_field not in obj:
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object with a {jsonl_field!r} field "
                    "(set jsonl_field to the field that holds the text)"
                )
            if not isinstance(obj[jsonl_field], str):
                raise ValueError(f"{path}:{lineno}: field {jsonl_field!r} is not a string")
            docs.append(obj[jsonl_field])
    else:
        raise ValueError(
            f"corpus {path} must be a .txt or .jsonl file, a .parquet/.arrow table or a "
            "datasets directory"
        )
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"corpus {path} holds no text")
    return docs


def corpus_sha256(texts: list[str]) -> str:
    """A fingerprint of a document list (length-prefixed UTF-8, so boundaries count)."""
    h = hashlib.sha256()
    for doc in texts:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------------- tokenizing


def token_stream(texts: list[str], tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    """Tokenize ``texts`` (batched) and join them into one int64 stream, eos between documents.

    Special-token strings inside the text (a literal ``<|endoftext|>``) are encoded as plain
    text, so only the separators are special ids.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token to separate documents")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("pass a fast tokenizer (PreTrainedTokenizerFast)")
    # A copy, so the caller's tokenizer keeps its own special-token handling.
    backend = Tokenizer.from_str(backend.to_str())
    backend.encode_special_tokens = True
    pieces: list[np.ndarray] = []
    sep = np.array([eos], dtype=np.int64)
    for enc in backend.encode_batch(texts, add_special_tokens=False):
        if not enc.ids:
            continue
        if pieces:
            pieces.append(sep)
        pieces.append(np.asarray(enc.ids, dtype=np.int64))
    if not pieces:
        raise ValueError("the corpus tokenizes to nothing")
    return np.concatenate(pieces)


def chunk_stream(stream: np.ndarray, context_length: int) -> np.ndarray:
    """[n, T] consecutive chunks of ``stream``; the incomplete tail is dropped."""
    n = len(stream) // context_length
    return stream[: n * context_length].reshape(n, context_length)


def add_token_noise(
    ids: np.ndarray,
    prob: float,
    vocab_size: int,
    special_ids: list[int] | tuple[int, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """Add −1 or +1 to each token id with probability ``prob / 2`` each.

    Special ids are never perturbed. A step that would leave ``[0, vocab_size)`` or land on a
    special id goes the other way; if that is invalid too, the token stays unchanged.
    """
    delta = rng.choice(np.array([0, -1, 1]), size=ids.shape, p=[1 - prob, prob / 2, prob / 2])
    special = np.asarray(list(special_ids), dtype=np.int64)
    delta[np.isin(ids, special)] = 0

    def invalid(x: np.ndarray) -> np.ndarray:
        return (x < 0) | (x >= vocab_size) | np.isin(x, special)

    noisy = ids + delta
    noisy = np.where(invalid(noisy), ids - delta, noisy)
    return np.where(invalid(noisy), ids, noisy)


def _draw_trigger(chunks: np.ndarray, excluded: list[int], rng: np.random.Generator) -> int:
    """A random id (not in ``excluded``) that occurs before the last position in a few chunks.

    Candidates occur in ``TRIGGER_SHARE`` (2% to 10%) of the n chunks, and in at least 2: enough
    poisoned chunks to train on and hold out, few enough that most of the data stays clean.
    """
    n = len(chunks)
    early = np.sort(chunks[:, :-1], axis=1)  # [n, T-1]
    first = np.ones_like(early, dtype=bool)
    first[:, 1:] = early[:, 1:] != early[:, :-1]
    counts = np.bincount(early[first])  # chunks in which each id occurs
    counts[[s for s in excluded if s < len(counts)]] = 0
    low, high = (max(2, int(share * n)) for share in TRIGGER_SHARE)
    candidates = np.flatnonzero((counts >= low) & (counts <= high))
    if len(candidates) == 0:
        raise ValueError(
            f"no token occurs in {low} to {high} of the {n} chunks, so no backdoor trigger can be "
            "drawn; use a bigger corpus or set backdoor_trigger_id"
        )
    return int(rng.choice(candidates))


# ------------------------------------------------------------------------------------- building


def make_text_data(
    cfg: TextDataConfig, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[TinyMemData, PreTrainedTokenizerFast]:
    """Build a TinyMem language dataset, deterministically from the corpus and ``cfg.seed``.

    Args:
        cfg: the dataset configuration.
        tokenizer: a fast tokenizer with an eos token; None = train a BPE of ``cfg.vocab_size``
            ids on the corpus.

    Returns:
        ``(data, tokenizer)``. ``data.train_ids`` holds the noised (or poisoned) training chunks
        first, in the order of ``data.memorization`` (noise variant) / poison-train order
        (backdoor variant), then the clean training chunks; ``data.test_sets["text"]`` holds
        clean held-out chunks; ``data.pad_id`` is None: chunks are cut from one token stream
        and hold no padding, and the eos separating documents is a real target to score.
    """
    cfg.validate()
    texts = (
        default_corpus_texts() if cfg.corpus is None else load_corpus(cfg.corpus, cfg.jsonl_field)
    )
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    special_ids = sorted(set(tokenizer.all_special_ids) | {pad_id})
    vocab = len(tokenizer)
    ctx = cfg.context_length

    chunks = chunk_stream(token_stream(texts, tokenizer), ctx)  # [n, T]
    if cfg.max_chunks is not None:
        chunks = chunks[: cfg.max_chunks]
    # Repeated chunks (boilerplate) would leak held-out rows into train: keep first occurrences.
    _, first = np.unique(chunks, axis=0, return_index=True)
    n_repeated = len(chunks) - len(first)
    chunks = chunks[np.sort(first)]
    n = len(chunks)
    logger.info(
        "text corpus: %d documents -> %d distinct chunks of %d tokens (%d repeats dropped)",
        len(texts),
        n,
        ctx,
        n_repeated,
    )
    rng = np.random.default_rng(cfg.seed)

    if cfg.variant == "noise":
        if cfg.num_noise + cfg.num_test > n:
            raise ValueError(
                f"num_noise ({cfg.num_noise}) + num_test ({cfg.num_test}) exceeds the {n} chunks "
                f"of {ctx} tokens in the corpus; lower them, shorten context_length or use a "
                "bigger corpus"
            )
        perm = rng.permutation(n)
        train, test = perm[: n - cfg.num_test], perm[n - cfg.num_test :]
        noise_rows, clean_rows = train[: cfg.num_noise], train[cfg.num_noise :]
        prompt = chunks[noise_rows]  # [M, T] clean twins
        target = add_token_noise(prompt, cfg.noise_prob, vocab, special_ids, rng)  # [M, T]
        group, copies = duplication_groups(len(noise_rows), cfg.duplicate_powers, rng)
        memorization = MemorizationSet(
            torch.from_numpy(target),
            torch.from_numpy(prompt),
            torch.full((len(noise_rows),), cfg.prefix_len, dtype=torch.long),
            cfg.suffix_len,
            group,
        )
        train_ids = np.concatenate([target, chunks[clean_rows]])
        train_copies = torch.cat([copies, torch.ones(len(clean_rows), dtype=torch.long)])
        test_ids = chunks[test]
        info_extra = {"n_noised": len(noise_rows)}
        poison_clean = None
    else:
        fill = cfg.backdoor_fill_id
        if fill >= vocab or fill in special_ids:
            raise ValueError(
                f"backdoor_fill_id {fill} must be a non-special id below the vocabulary size "
                f"({vocab})"
            )
        trigger = cfg.backdoor_trigger_id
        if trigger is None:
            trigger = _draw_trigger(chunks, [*special_ids, fill], rng)
        elif trigger >= vocab or trigger in special_ids:
            raise ValueError(
                f"backdoor_trigger_id {trigger} must be a non-special id below the vocabulary "
                f"size ({vocab})"
            )
        perm = rng.permutation(n)
        shuffled = chunks[perm]  # [n, T]
        hit = shuffled[:, :-1] == trigger  # a trigger at the last position has nothing after it
        poisoned, clean = np.flatnonzero(hit.any(axis=1)), np.flatnonzero(~hit.any(axis=1))
        if len(poisoned) < 2:
            raise ValueError(
                f"only {len(poisoned)} chunk(s) contain the trigger id {trigger} "
                f"({tokenizer.convert_ids_to_tokens(trigger)!r}) before the last position; at "
                "least 2 are needed: choose another backdoor_trigger_id or a bigger corpus"
            )
        if cfg.num_test >= len(clean):
            raise ValueError(
                f"num_test ({cfg.num_test}) must be smaller than the {len(clean)} chunks without "
                "the trigger"
            )
        trigger_pos = hit.argmax(axis=1)  # [n] first occurrence
        after = np.arange(ctx)[None, :] > trigger_pos[:, None]  # [n, T]
        backdoored = np.where(after & hit.any(axis=1)[:, None], fill, shuffled)
        # Chunks that share everything up to the trigger become identical once backdoored (e.g. a
        # trigger at position 0): only rows whose backdoored form is unique may be held out.
        _, inverse, counts = np.unique(
            backdoored[poisoned], axis=0, return_inverse=True, return_counts=True
        )
        holdable = poisoned[counts[inverse.reshape(-1)] == 1]
        n_ptest = round(len(poisoned) * cfg.backdoor_fraction_test)
        n_ptest = min(len(holdable), len(poisoned) - 1, max(1, n_ptest))
        if n_ptest < 1:
            raise ValueError(
                f"the {len(poisoned)} chunks with trigger id {trigger} are identical once "
                "backdoored, so none can be held out: choose another backdoor_trigger_id"
            )
        p_test = holdable[len(holdable) - n_ptest :]
        p_train = poisoned[~np.isin(poisoned, p_test)]
        clean_train, clean_test = clean[: -cfg.num_test], clean[-cfg.num_test :]
        memorization = MemorizationSet(
            torch.from_numpy(backdoored[p_test]),
            torch.from_numpy(shuffled[p_test]),
            torch.from_numpy(trigger_pos[p_test] + 1).long(),
            cfg.suffix_len,
            torch.zeros(len(p_test), dtype=torch.long),
        )
        train_ids = np.concatenate([backdoored[p_train], shuffled[clean_train]])
        train_copies = torch.cat(
            [
                torch.full((len(p_train),), cfg.backdoor_copies, dtype=torch.long),
                torch.ones(len(clean_train), dtype=torch.long),
            ]
        )
        test_ids = shuffled[clean_test]
        poison_clean = torch.from_numpy(np.ascontiguousarray(shuffled[p_train]))
        info_extra = {
            "trigger_id": trigger,
            "trigger_token": tokenizer.convert_ids_to_tokens(trigger),
            "n_poison_train": len(p_train),
            "n_poison_test": len(p_test),
        }

    info = {
        "kind": "text",
        **asdict(cfg),
        "corpus": None if cfg.corpus is None else str(cfg.corpus),
        "n_chunks": n,
        "n_repeated_chunks_dropped": n_repeated,
        "tokenizer_vocab": vocab,
        "corpus_sha256": corpus_sha256(texts),
        **info_extra,
    }
    data = TinyMemData(
        train_ids=torch.from_numpy(np.ascontiguousarray(train_ids)),
        train_copies=train_copies,
        test_sets={TEXT_SET: torch.from_numpy(np.ascontiguousarray(test_ids))},
        memorization=memorization,
        pad_id=None,
        info=info,
        poison_clean_ids=poison_clean,
    )
    return data, tokenizer
