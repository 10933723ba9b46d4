"""Mine a token corpus for k-extractable sequences: the forget set of unlearning.

TinyMem (Sakarvadia et al., arXiv 2410.02159) built its Pythia forget set by scanning the training
corpus for sequences whose 32-token prefix makes greedy decoding reproduce the next 32 tokens
exactly. :func:`mine` does that for any local causal LM and corpus:

1. **Windows.** The corpus is cut into windows of W = P + K tokens (prefix P, suffix K), ``stride``
   tokens apart (default: W, i.e. non-overlapping windows; a smaller stride finds passages that
   straddle window boundaries at the cost of scanning W / stride times more windows). Windows lie
   inside one document of a jsonl file or one row of a 2-D array; a flat token stream (1-D
   ``.npy`` or raw ``.bin``, as Pythia's deduplicated Pile is stored) is one long document, so
   windows may cross its end-of-document tokens, as training sequences do. Tokens left after the
   last full window of a document are not scanned.
2. **Verdicts.** Batches of windows go through :func:`~unmemorize.metrics.memorization.memorized`
   (teacher-forced greedy exact match, early rejection every ``check_every`` tokens). Only one
   batch of windows is held in memory: files are streamed line by line or memory-mapped.
3. **Degenerate filter.** A memorized window whose suffix has fewer than
   ``min_unique_suffix_tokens`` distinct tokens (runs of one token, short repeated patterns) is
   dropped: reproducing it says little about memorization.
4. **Near-duplicate filter.** Two windows are near-duplicates when the Jaccard similarity of their
   sets of token n-grams (``ngram``, default 3: trigram overlap is the duplicate test of Carlini et
   al., "Extracting Training Data from Large Language Models", 2021) is at least
   ``dedup_jaccard``. A memorized window is compared exactly with every window kept before it
   through an inverted index (n-gram -> kept windows), so only windows that share an n-gram are
   ever compared: the cost grows with the memorized set, which is a small part of the corpus, not
   with the corpus. The first window of a group is kept, later ones add to its ``copies``.
   Overlapping windows of one memorized passage (stride < W) fold into one row the same way.
5. **Score.** Each kept window gets ``score`` = the mean log-probability (natural log) of its K
   suffix tokens given everything before them (teacher-forced; at most 0, closer to 0 = reproduced
   more confidently), computed in one extra forward pass over the kept windows only.

The forget set is written as jsonl, one ``{"input_ids": [...P + K ids], "score": s, "copies": c,
"source": "..."}`` per kept window in corpus order, which ``unmemorize measure --sequences`` and
``unmemorize unlearn --forget`` read as is. ``source`` is ``FILE:LINE:OFFSET`` for jsonl (1-based
line, token offset in the document), ``FILE:ROW:OFFSET`` for a 2-D array (0-based row) and
``FILE:OFFSET`` for a flat token stream.

Shapes: B windows per batch, W = P + K window tokens, V vocabulary, N kept windows.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.corpus import Corpus, open_corpus
from .io import atomic_write_text
from .metrics.losses import target_logprobs
from .metrics.memorization import memorized
from .runtime import check_window

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ dedup


class _NgramIndex:
    """Exact n-gram-set Jaccard against every kept window, via an inverted index."""

    def __init__(self, n: int, threshold: float):
        self.n, self.threshold = n, threshold
        self.postings: dict[bytes, list[int]] = {}
        self.sizes: list[int] = []

    def _grams(self, ids: np.ndarray) -> set[bytes]:
        view = np.lib.stride_tricks.sliding_window_view(ids.astype(np.int64), self.n)
        return {g.tobytes() for g in view}

    def add_or_match(self, ids: np.ndarray) -> int | None:
        """Index ``ids`` [W] as a new kept window and return None, or return the first kept
        window it near-duplicates (then nothing is indexed)."""
        grams = self._grams(ids)
        shared: Counter[int] = Counter()
        for g in grams:
            shared.update(self.postings.get(g, ()))
        for j in sorted(shared):
            c = shared[j]
            if c >= self.threshold * (len(grams) + self.sizes[j] - c):
                return j
        j = len(self.sizes)
        self.sizes.append(len(grams))
        for g in grams:
            self.postings.setdefault(g, []).append(j)
        return None


# ----------------------------------------------------------------------------------- mining


@dataclass
class MiningResult:
    """The kept memorized windows and the counts of every filter.

    Attributes:
        input_ids: [N, P + K] kept windows, in corpus order.
        score: [N] mean log-probability of the K suffix tokens (at most 0; higher = surer).
        copies: [N] memorized windows folded into each kept one (itself included).
        source: N locations, ``FILE:LINE:OFFSET`` / ``FILE:ROW:OFFSET`` / ``FILE:OFFSET``.
    """

    input_ids: torch.Tensor
    score: torch.Tensor
    copies: torch.Tensor
    source: list[str]
    prefix_len: int
    suffix_len: int
    n_scanned: int = 0
    n_memorized: int = 0
    n_degenerate: int = 0
    n_duplicates: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def n_kept(self) -> int:
        return len(self.source)

    def counts(self) -> dict:
        """Scanned, memorized, dropped degenerate / duplicates, kept, seconds."""
        return {
            "scanned": self.n_scanned,
            "memorized": self.n_memorized,
            "dropped_degenerate": self.n_degenerate,
            "dropped_duplicates": self.n_duplicates,
            "kept": self.n_kept,
            "seconds": self.seconds,
        }

    def rows(self) -> list[dict]:
        """One ``{"input_ids", "score", "copies", "source"}`` dict per kept window."""
        return [
            {"input_ids": ids, "score": round(s, 6), "copies": c, "source": src}
            for ids, s, c, src in zip(
                self.input_ids.tolist(),
                self.score.tolist(),
                self.copies.tolist(),
                self.source,
                strict=True,
            )
        ]

    def write_jsonl(self, path: str | Path) -> Path:
        """Write the forget set atomically (read by ``measure --sequences``/``unlearn --forget``)."""
        path = Path(path)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows()))
        return path


@torch.inference_mode()
def suffix_logprob(model: PreTrainedModel, ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """[B] mean log-probability of tokens ``ids[:, prefix_len:]`` given what precedes them."""
    device = next(model.parameters()).device
    k = ids.shape[1] - prefix_len
    x = ids.to(device)
    logits = model(input_ids=x[:, :-1], use_cache=False, logits_to_keep=k).logits  # [B, K, V]
    # The K kept positions predict x[:, prefix_len:], the targets of the window x[:, prefix_len-1:].
    return target_logprobs(logits, x[:, prefix_len - 1 :]).mean(dim=1).cpu()


def mine(
    model: PreTrainedModel,
    corpus: str | Path | np.ndarray | torch.Tensor,
    prefix_len: int = 32,
    suffix_len: int = 32,
    *,
    stride: int | None = None,
    min_unique_suffix_tokens: int | None = None,
    dedup_jaccard: float | None = 0.8,
    ngram: int = 3,
    batch_size: int = 512,
    check_every: int | None = 8,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype_ids: str | None = None,
    max_windows: int | None = None,
    progress: bool = False,
    column: str | None = None,
) -> MiningResult:
    """Find the windows of ``corpus`` that ``model`` reproduces verbatim (see the module doc).

    Args:
        model: a causal LM in eval mode, on the device to scan with.
        corpus: a ``.jsonl`` / ``.parquet`` / ``.arrow`` / ``.npy`` / ``.bin`` path, a
            ``datasets`` directory or an in-memory 1-D/2-D array of ids.
        prefix_len: P, prompt tokens of each window.
        suffix_len: K, tokens greedy decoding must reproduce.
        stride: tokens between window starts; None = P + K (non-overlapping windows).
        min_unique_suffix_tokens: drop memorized windows whose suffix has fewer distinct tokens;
            None = K // 2 (16 for the 32-token suffix); 0 keeps all.
        dedup_jaccard: n-gram Jaccard at or above which a window is a near-duplicate of an
            earlier kept one; None disables deduplication.
        ngram: n of the n-gram sets compared by the deduplication.
        batch_size: windows per forward pass (and per read from the corpus).
        check_every: early rejection of :func:`memorized`; None = one full pass per batch.
        tokenizer: tokenizes ``{"text": ...}`` lines of a jsonl corpus.
        dtype_ids: ``uint16`` or ``int32``, the id type of a raw ``.bin`` corpus.
        max_windows: stop after scanning this many windows (None: the whole corpus).
        progress: show a progress bar over the scanned windows.
        column: a jsonl/table corpus: the key or column of each document's text or token ids
            (default ``input_ids`` or ``text``).

    Returns:
        The kept windows with their scores, sources and the counts of every step.

    Raises:
        ValueError / FileNotFoundError: a bad corpus (format, ids outside the vocabulary, no
            window of P + K tokens) or settings; raised before any result is returned.
    """
    t0 = time.perf_counter()
    window = prefix_len + suffix_len
    stride = window if stride is None else stride
    min_unique = suffix_len // 2 if min_unique_suffix_tokens is None else min_unique_suffix_tokens
    _check_settings(
        model, prefix_len, suffix_len, stride, min_unique, dedup_jaccard, ngram, batch_size,
        max_windows,
    )  # fmt: skip
    source = open_corpus(corpus, tokenizer, dtype_ids, column)
    vocab = model.get_input_embeddings().weight.shape[0]
    dedup = _NgramIndex(ngram, dedup_jaccard) if dedup_jaccard is not None else None

    total = source.total_windows(window, stride)
    if total == 0:
        raise ValueError(f"{source.name} holds no window of P + K = {window} tokens")
    if max_windows is not None:
        total = min(total, max_windows) if total is not None else max_windows
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="mine", unit="window", dynamic_ncols=True)

    kept_ids: list[torch.Tensor] = []
    kept_where: list[tuple[int, int]] = []
    kept_score: list[torch.Tensor] = []
    copies: list[int] = []
    n_scanned = n_memorized = n_degenerate = n_duplicates = 0
    try:
        for ids, where in source.batches(window, stride, batch_size):
            if max_windows is not None and n_scanned + len(ids) > max_windows:
                ids, where = ids[: max_windows - n_scanned], where[: max_windows - n_scanned]
            _check_ids(ids, where, vocab, source)
            x = torch.from_numpy(np.ascontiguousarray(ids))  # [B, W]
            verdict = memorized(
                model, x, x, prefix_len, suffix_len, batch_size=batch_size, check_every=check_every
            )
            n_scanned += len(x)
            rows = verdict.nonzero().squeeze(1).tolist()
            n_memorized += len(rows)
            fresh = []
            for i in rows:
                if len(np.unique(ids[i, prefix_len:])) < min_unique:
                    n_degenerate += 1
                    continue
                match = dedup.add_or_match(ids[i]) if dedup is not None else None
                if match is not None:
                    n_duplicates += 1
                    copies[match] += 1
                    continue
                fresh.append(i)
                copies.append(1)
            if fresh:
                kept_ids.append(x[fresh])
                kept_where.extend((int(where[i, 0]), int(where[i, 1])) for i in fresh)
                kept_score.append(suffix_logprob(model, x[fresh], prefix_len))
            if bar is not None:
                bar.update(len(x))
                bar.set_postfix(memorized=n_memorized, kept=len(copies))
            if max_windows is not None and n_scanned >= max_windows:
                break
    finally:
        if bar is not None:
            bar.close()
    if n_scanned == 0:
        raise ValueError(
            f"{source.name} holds no document of at least P + K = {window} tokens; "
            "lower --prefix-len/--suffix-len"
        )
    result = MiningResult(
        input_ids=torch.cat(kept_ids) if kept_ids else torch.empty(0, window, dtype=torch.long),
        score=torch.cat(kept_score) if kept_score else torch.empty(0),
        copies=torch.tensor(copies, dtype=torch.long),
        source=[source.source(d, o) for d, o in kept_where],
        prefix_len=prefix_len,
        suffix_len=suffix_len,
        n_scanned=n_scanned,
        n_memorized=n_memorized,
        n_degenerate=n_degenerate,
        n_duplicates=n_duplicates,
        seconds=time.perf_counter() - t0,
        settings={
            "corpus": source.name,
            "stride": stride,
            "min_unique_suffix_tokens": min_unique,
            "dedup_jaccard": dedup_jaccard,
            "ngram": ngram,
            "check_every": check_every,
        },
    )
    logger.info("mined %s: %s", source.name, result.counts())
    return result


def _check_settings(
    model, prefix_len, suffix_len, stride, min_unique, dedup_jaccard, ngram, batch_size, max_windows
) -> None:
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError("--prefix-len and --suffix-len must be positive")
    window = prefix_len + suffix_len
    check_window(model, prefix_len, suffix_len)
    if stride < 1:
        raise ValueError("--stride must be positive")
    if batch_size < 1:
        raise ValueError("--batch-size must be positive")
    if max_windows is not None and max_windows < 1:
        raise ValueError("--max-windows must be positive")
    if not 0 <= min_unique <= suffix_len:
        raise ValueError(
            f"--min-unique {min_unique} must lie in 0..{suffix_len} (the suffix length); "
            "0 keeps degenerate sequences"
        )
    if dedup_jaccard is not None and not 0 < dedup_jaccard <= 1:
        raise ValueError("--dedup-jaccard must lie in (0, 1]")
    if not 1 <= ngram <= window:
        raise ValueError(f"--ngram must lie in 1..{window} (the window length)")


def _check_ids(ids: np.ndarray, where: np.ndarray, vocab: int, source: Corpus) -> None:
    bad = (ids < 0) | (ids >= vocab)  # [B, W]
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"{source.source(int(where[i, 0]), int(where[i, 1]) + j)}: token id {int(ids[i, j])} "
            f"is outside the model's vocabulary (0..{vocab - 1}); the corpus was tokenized for "
            "another model (or --dtype-ids is wrong)"
        )


__all__ = ["MiningResult", "mine", "suffix_logprob"]
