"""Sequence files for ``unmemorize measure`` and ``unlearn --forget/--retain/--eval``: jsonl, one
per line, or a table with the same columns (Parquet, Arrow, a ``datasets`` directory;
:mod:`unmemorize.data.records`).

Each line (row) is a JSON object with one of:

* ``{"input_ids": [...]}`` — a token sequence; its first P tokens prompt, the next K must follow;
* ``{"text": "..."}`` — the same, tokenized with the model's tokenizer (no special tokens added);
* ``{"prefix_ids": [...], "target_ids": [...]}`` — a clean prompt and the (e.g. noised)
  continuation to reproduce: the first P prefix tokens prompt, the first K target tokens are scored.

Other keys (``score``, ``id``, ...) are ignored. ``column`` (``--column``) reads one named key or
column instead, holding text or token ids.

:func:`iter_sequences` streams a file in chunks of rows (memory bounded by the chunk, whatever
the file's length: ``measure --sequences`` uses it); :func:`read_sequences` returns all rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from .records import Records

#: The keys a sequence row may use (a table reads only these columns).
SEQUENCE_KEYS = ("prefix_ids", "target_ids", "input_ids", "text")


def _fail(rows: Records, line_no: int, why: str) -> ValueError:
    return ValueError(f"{rows.where(line_no)}: {why}")


def _ids(value, rows: Records, line_no: int, key: str, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _fail(rows, line_no, f"{key!r} must be a list of integer token ids")
    bad = [v for v in value if v < 0 or v >= vocab_size]
    if bad:
        raise _fail(
            rows,
            line_no,
            f"token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1}); "
            "the sequences were tokenized for another model",
        )
    return value


def read_sequences(
    path: str | Path,
    tokenizer,
    vocab_size: int,
    prefix_len: int,
    suffix_len: int,
    column: str | None = None,
) -> torch.Tensor:
    """Read a sequence file into [M, P + K] ids: the prompt, then the continuation to reproduce.

    Raises: as :func:`iter_sequences`.
    """
    return torch.cat(
        list(iter_sequences(path, tokenizer, vocab_size, prefix_len, suffix_len, column=column))
    )


def iter_sequences(
    path: str | Path,
    tokenizer,
    vocab_size: int,
    prefix_len: int,
    suffix_len: int,
    chunk_rows: int = 4096,
    column: str | None = None,
) -> Iterator[torch.Tensor]:
    """Stream a sequence file as [<= chunk_rows, P + K] id tensors, in file order.

    Only one chunk of rows is held at a time (a table is read a record batch at a time). Errors
    are raised when the offending line is reached, i.e. after the chunks before it were yielded.

    Args:
        column: the one key/column to read (text or token ids); None = :data:`SEQUENCE_KEYS`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, malformed JSON, unknown layout, a sequence shorter than P + K,
            or a file/line beyond the bounds of :func:`unmemorize.io.iter_jsonl`; the message
            names the file and the 1-based line number (a table: the 0-based row); a table
            without the column, or with one of the wrong type.
        UserError: a table given without pyarrow installed.
    """
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"sequence file {path} does not exist")
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError("--prefix-len and --suffix-len must be positive")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    need = prefix_len + suffix_len
    records = Records(path, column=column, keys=SEQUENCE_KEYS, what="sequence file")
    rows: list[list[int]] = []
    any_rows = False
    for line_no, obj in records:
        if len(rows) == chunk_rows:
            yield torch.tensor(rows, dtype=torch.long)
            rows, any_rows = [], True
        if not isinstance(obj, dict):
            raise _fail(records, line_no, "each line must be a JSON object")
        if "prefix_ids" in obj or "target_ids" in obj:
            pre = _ids(obj.get("prefix_ids"), records, line_no, "prefix_ids", vocab_size)
            tgt = _ids(obj.get("target_ids"), records, line_no, "target_ids", vocab_size)
            if len(pre) < prefix_len or len(tgt) < suffix_len:
                raise _fail(
                    records,
                    line_no,
                    f"prefix_ids has {len(pre)} tokens and target_ids {len(tgt)}; need at least "
                    f"{prefix_len} and {suffix_len} (lower --prefix-len/--suffix-len)",
                )
            rows.append(pre[:prefix_len] + tgt[:suffix_len])
            continue
        if "input_ids" in obj:
            ids = _ids(obj["input_ids"], records, line_no, "input_ids", vocab_size)
        elif "text" in obj:
            if not isinstance(obj["text"], str):
                raise _fail(records, line_no, "'text' must be a string")
            ids = tokenizer(obj["text"], add_special_tokens=False)["input_ids"]
        else:
            raise _fail(
                records, line_no, "expected a key 'input_ids', 'text' or 'prefix_ids'+'target_ids'"
            )
        if len(ids) < need:
            raise _fail(
                records,
                line_no,
                f"sequence has {len(ids)} tokens, fewer than prefix + suffix = {need} "
                "(lower --prefix-len/--suffix-len or drop short sequences)",
            )
        rows.append(ids[:need])
    if not rows and not any_rows:
        raise ValueError(f"sequence file {path} holds no sequences")
    if rows:
        yield torch.tensor(rows, dtype=torch.long)
