"""Token corpora for mining, read as batches of fixed-length windows with bounded memory.

Formats, by file name: ``.jsonl``/``.json`` (one document per line, ``{"input_ids": [...]}`` or
``{"text": ...}`` tokenized with the model's tokenizer, streamed line by line), a table with such a
column (``.parquet``, ``.arrow`` or a ``datasets`` directory, streamed a record batch at a time;
``column`` names another one), ``.npy`` (1-D token stream or 2-D rows of documents,
memory-mapped) and raw ``.bin`` token ids (memory-mapped, the id dtype given, as Pythia's
deduplicated Pile is stored: uint16), or an in-memory 1-D/2-D array.

Windows of W tokens start every ``stride`` tokens inside a document (a flat stream is one long
document); tokens after a document's last full window are not covered. Each batch holds at most
``batch_size`` windows (a 2-D row is never split, so a batch may hold one row's windows when a row
has more), plus their locations ``(doc, offset)``: the 1-based jsonl line or 0-based row (of a
2-D array or a table; 0 for a stream) and the token offset in it; :meth:`Corpus.source` renders
them as ``FILE:LINE:OFFSET``, ``FILE:ROW:OFFSET`` (a table: ``FILE:row N:OFFSET``) or
``FILE:OFFSET``.

Shapes: B windows per batch, W window tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .records import Records, is_table

#: Token-id dtypes of raw ``.bin`` streams (Pythia's Pile: uint16).
RAW_DTYPES = {"uint16": np.uint16, "int32": np.int32}


class Corpus:
    """Windows of a corpus, in batches: ``(ids [B, W] int64, where [B, 2] (doc, offset))``."""

    name: str

    def batches(
        self, window: int, stride: int, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def total_windows(self, window: int, stride: int) -> int | None:
        """Windows in the corpus, or None where only a full read can tell (jsonl)."""
        return None

    def source(self, doc: int, offset: int) -> str:
        """Where a window (or token) lies, for humans: ``FILE:LINE:OFFSET`` and the like."""
        raise NotImplementedError


def _n_windows(length: int, window: int, stride: int) -> int:
    return 0 if length < window else (length - window) // stride + 1


class _FlatCorpus(Corpus):
    """One long token stream (1-D array or memmap), sliced one batch at a time."""

    def __init__(self, ids: np.ndarray, name: str):
        self.ids, self.name = ids, name

    def total_windows(self, window: int, stride: int) -> int:
        return _n_windows(len(self.ids), window, stride)

    def batches(self, window, stride, batch_size):
        n = self.total_windows(window, stride)
        for first in range(0, n, batch_size):
            count = min(batch_size, n - first)
            lo = first * stride
            chunk = np.asarray(self.ids[lo : lo + (count - 1) * stride + window])
            # every stride-th window of the contiguous chunk, without copying the chunk per window
            view = np.lib.stride_tricks.sliding_window_view(chunk, window)[::stride]  # [B, W]
            where = np.stack([np.zeros(count, dtype=np.int64), lo + stride * np.arange(count)], 1)
            yield view.astype(np.int64), where

    def source(self, doc, offset):
        return f"{self.name}:{offset}"


class _RowsCorpus(Corpus):
    """A 2-D array: each row is a document (e.g. a batch of pre-tokenized training sequences)."""

    def __init__(self, ids: np.ndarray, name: str):
        self.ids, self.name = ids, name

    def total_windows(self, window, stride):
        return self.ids.shape[0] * _n_windows(self.ids.shape[1], window, stride)

    def batches(self, window, stride, batch_size):
        per_row = _n_windows(self.ids.shape[1], window, stride)
        if per_row == 0:
            return
        rows_per_batch = max(1, batch_size // per_row)
        for r0 in range(0, self.ids.shape[0], rows_per_batch):
            block = np.asarray(self.ids[r0 : r0 + rows_per_batch])  # [R, L]
            view = np.lib.stride_tricks.sliding_window_view(block, window, axis=1)[:, ::stride]
            r, w = view.shape[0], view.shape[1]
            where = np.stack(
                [np.repeat(r0 + np.arange(r), w), np.tile(stride * np.arange(w), r)], 1
            )
            yield view.reshape(r * w, window).astype(np.int64), where

    def source(self, doc, offset):
        return f"{self.name}:{doc}:{offset}"


class _RecordsCorpus(Corpus):
    """Documents ``{"input_ids": [...]}`` or ``{"text": ...}``: jsonl lines or table rows
    (:class:`~unmemorize.data.records.Records`), read one at a time."""

    def __init__(self, records: Records, tokenizer: PreTrainedTokenizerBase | None):
        self.records, self.name, self.tokenizer = records, str(records.path), tokenizer

    def _fail(self, line_no: int, why: str) -> ValueError:
        return ValueError(f"{self.records.where(line_no)}: {why}")

    def _document(self, obj: object, line_no: int) -> list[int]:
        if not isinstance(obj, dict):
            raise self._fail(line_no, 'each line must be a JSON object {"input_ids": [...]}')
        if "input_ids" in obj:
            ids = obj["input_ids"]
            # type() rather than isinstance(): bool is an int subclass and is no token id
            if not isinstance(ids, list) or not all(type(v) is int for v in ids):
                raise self._fail(line_no, "'input_ids' must be a list of integer token ids")
            return ids
        if "text" in obj:
            if not isinstance(obj["text"], str):
                raise self._fail(line_no, "'text' must be a string")
            if self.tokenizer is None:
                raise self._fail(line_no, "a 'text' line needs the model's tokenizer")
            return self.tokenizer(obj["text"], add_special_tokens=False)["input_ids"]
        raise self._fail(line_no, "expected a key 'input_ids' or 'text'")

    def batches(self, window, stride, batch_size):
        ids_buf: list[np.ndarray] = []
        where_buf: list[np.ndarray] = []
        held = 0
        # the corpus is streamed, so only a line (never the file) is bounded
        for line_no, obj in self.records:
            doc = np.asarray(self._document(obj, line_no), dtype=np.int64)
            n = _n_windows(len(doc), window, stride)
            if n == 0:
                continue
            view = np.lib.stride_tricks.sliding_window_view(doc, window)[::stride]  # [n, W]
            start = 0
            # slices of at most one batch: a long document is never copied whole
            while start < n:
                take = min(n - start, batch_size - held)
                ids_buf.append(view[start : start + take])
                offsets = stride * np.arange(start, start + take)
                where_buf.append(np.stack([np.full(take, line_no), offsets], 1))
                held += take
                start += take
                if held == batch_size:
                    yield np.concatenate(ids_buf), np.concatenate(where_buf)
                    ids_buf, where_buf, held = [], [], 0
        if held:
            yield np.concatenate(ids_buf), np.concatenate(where_buf)

    def source(self, doc, offset):
        return f"{self.records.where(doc)}:{offset}"  # FILE:LINE:OFFSET, FILE:row N:OFFSET


def _array_corpus(ids: np.ndarray, name: str) -> Corpus:
    if ids.dtype.kind not in "iu":
        raise ValueError(
            f"{name} holds {ids.dtype} values; token ids must be integers (uint16, int32, int64)"
        )
    if ids.ndim == 1:
        return _FlatCorpus(ids, name)
    if ids.ndim == 2:
        return _RowsCorpus(ids, name)
    raise ValueError(f"{name} is a {ids.ndim}-D array; expected a 1-D token stream or 2-D rows")


def open_corpus(
    corpus: str | Path | np.ndarray | torch.Tensor,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype_ids: str | None = None,
    column: str | None = None,
) -> Corpus:
    """Open a corpus by file type: ``.jsonl``/``.json`` lines, a table (``.parquet``, ``.arrow``,
    a ``datasets`` directory), ``.npy`` (memory-mapped), raw ``.bin`` (memory-mapped,
    ``dtype_ids`` required) or an in-memory 1-D/2-D array of ids.

    Args:
        column: jsonl/table only: the key or column holding each document's text or token ids
            (default: ``input_ids`` or ``text``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown or malformed format, non-integer ids, an empty file, a table without
            the column.
        UserError: a table given without pyarrow installed.
    """
    if isinstance(corpus, torch.Tensor):
        corpus = corpus.cpu().numpy()
    if isinstance(corpus, np.ndarray):
        if dtype_ids is not None:
            raise ValueError("dtype_ids applies to raw .bin files only")
        if column is not None:
            raise ValueError("column applies to jsonl and table corpora only")
        return _array_corpus(corpus, "array")
    path = Path(corpus)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    suffix = path.suffix.lower()
    if dtype_ids is not None and suffix != ".bin":
        raise ValueError("--dtype-ids applies to raw .bin token files only (.npy stores its dtype)")
    if column is not None and suffix in (".npy", ".bin"):
        raise ValueError(
            f"--column applies to jsonl and table corpora; {path} holds bare token ids"
        )
    if is_table(path):
        return _RecordsCorpus(Records(path, column=column, what="corpus file"), tokenizer)
    if path.stat().st_size == 0:
        raise ValueError(f"corpus file {path} is empty")
    if suffix in (".jsonl", ".json"):
        return _RecordsCorpus(
            Records(path, column=column, max_bytes=0, what="corpus file"), tokenizer
        )
    if suffix == ".npy":
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(
                f"{path} is not a readable .npy array ({str(err).splitlines()[0]}); "
                "save token ids with numpy.save"
            ) from None
        return _array_corpus(ids, str(path))
    if suffix == ".bin":
        if dtype_ids is None:
            raise ValueError(
                f"{path} is a raw token file: pass --dtype-ids uint16 or int32 "
                "(Pythia's Pile .bin files are uint16)"
            )
        if dtype_ids not in RAW_DTYPES:
            raise ValueError(f"--dtype-ids must be one of {', '.join(RAW_DTYPES)}")
        dtype = np.dtype(RAW_DTYPES[dtype_ids])
        if path.stat().st_size % dtype.itemsize:
            raise ValueError(
                f"{path} has {path.stat().st_size} bytes, not a whole number of {dtype_ids} ids; "
                "check --dtype-ids"
            )
        return _FlatCorpus(np.memmap(path, dtype=dtype, mode="r"), str(path))
    raise ValueError(
        f"cannot tell the format of corpus {path}: name it .jsonl (one document per line), "
        ".parquet / .arrow (a table), .npy (numpy token ids) or .bin (raw token ids, with "
        "--dtype-ids), or pass a datasets directory"
    )


__all__ = ["RAW_DTYPES", "Corpus", "open_corpus"]
