"""Rows of an input file as dicts, streamed: jsonl lines, or a table (Parquet, Arrow, a
Hugging Face ``datasets`` directory written by ``save_to_disk``).

One reader for every option that takes sequences or documents (``measure --sequences``,
``unlearn --forget/--retain/--eval``, ``mine --corpus``, RESTOR's ``--docs/--forget/--retain``,
TinyMem's text corpus), so a table gives the same rows, in the same order, as the jsonl file with
one ``{"column": value}`` object per row: the readers above validate one kind of row.

Tables are read with ``pyarrow`` alone (the optional extra ``unmemorize[datasets]``), a record
batch of at most ``batch_rows`` rows at a time and only the columns used, so memory is bounded by a
batch whatever the table's size. A ``save_to_disk`` directory holds ``dataset_info.json``,
``state.json`` (its ``_data_files`` list the shards in order) and the shards, Arrow IPC *stream*
files; a ``.arrow`` file may be an IPC stream (what ``datasets`` writes) or an IPC file (Feather
v2); both are memory-mapped.

The column: ``column=None`` keeps each reader's own keys (``keys``: e.g. ``input_ids``, ``text``,
``prefix_ids`` + ``target_ids``); ``column="NAME"`` (``--column``) reads that one column, whose
rows become ``{"text": value}`` (a string) or ``{"input_ids": value}`` (a list of integer token
ids), in jsonl files too.

Rows are located for messages and for mined windows' sources as ``FILE:LINE`` (jsonl, 1-based
lines) or ``FILE:row N`` (tables, 0-based rows as ``dataset[N]`` numbers them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import iter_jsonl, read_json

#: File suffixes read as tables (a ``datasets`` directory is recognized by its files).
TABLE_SUFFIXES = (".parquet", ".arrow")
#: Rows converted to Python objects at a time (bounds a table reader's memory).
BATCH_ROWS = 1024
INSTALL_HINT = 'pip install "unmemorize[datasets]"'


def is_table(path: str | Path) -> bool:
    """True for a ``.parquet`` / ``.arrow`` file or a directory (a ``datasets`` directory)."""
    path = Path(path)
    return path.suffix.lower() in TABLE_SUFFIXES or path.is_dir()


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError(
            f"reading Parquet, Arrow and datasets inputs needs pyarrow: {INSTALL_HINT}"
        ) from None
    return pyarrow


def _kind(pa, dtype) -> str | None:
    """``"text"`` for a string column, ``"ids"`` for a list of integers, else None."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
    ) and pa.types.is_integer(dtype.value_type):
        return "ids"
    return None


class Records:
    """The rows of ``path`` as ``(n, dict)``: n is the jsonl line (1-based) or table row (0-based).

    Args:
        path: a ``.jsonl`` file (any other file name is read as jsonl too, as before), a
            ``.parquet`` / ``.arrow`` file or a ``datasets`` ``save_to_disk`` directory.
        column: the one column (key) to read, holding text or token ids; None = ``keys``.
        keys: the columns a row may use when ``column`` is None (tables read only these).
        max_bytes: jsonl size limit (:func:`unmemorize.io.iter_jsonl`; 0 = streamed, none).
        what: what the file is, for messages ("sequence file", "corpus file").

    Raises (on construction, before any row): FileNotFoundError (no such file), UserError
    (pyarrow missing), ValueError (an unreadable table, a missing column or one of the wrong
    type; one line naming the file, the column and how to fix it).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        column: str | None = None,
        keys: Sequence[str] = ("input_ids", "text"),
        max_bytes: int | None = None,
        what: str = "file",
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.path, self.column, self.keys = Path(path), column, tuple(keys)
        self.max_bytes, self.what, self.batch_rows = max_bytes, what, batch_rows
        if column is not None and not column:
            raise ValueError("--column must name a column (or leave it out)")
        if not self.path.exists():
            raise FileNotFoundError(f"{what} {self.path} does not exist")
        self.table = is_table(self.path)
        if self.table:
            self._shards = self._table_shards()
            self._columns, self._rename = self._choose_columns()

    def where(self, n: int) -> str:
        return f"{self.path}:row {n}" if self.table else f"{self.path}:{n}"

    # --- tables -------------------------------------------------------------------------------

    def _unreadable(self, file: Path, err: BaseException, fmt: str) -> ValueError:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return ValueError(
            f"{file} is not a readable {fmt} file ({first}); write it with pandas' to_parquet, "
            "pyarrow or datasets' save_to_disk / to_parquet"
        )

    def _table_shards(self) -> list[Path]:
        path = self.path
        if not path.is_dir():
            return [path]
        if (path / "dataset_dict.json").is_file():
            splits = [p.name for p in sorted(path.iterdir()) if (p / "state.json").is_file()]
            raise ValueError(
                f"{path} is a DatasetDict (splits: {', '.join(splits) or 'none'}); pass one "
                f"split's directory, e.g. {path / (splits[0] if splits else 'train')}"
            )
        state_file = path / "state.json"
        if not state_file.is_file():
            raise ValueError(
                f"{path} is a directory but not a datasets directory (no state.json); pass a "
                "directory written by Dataset.save_to_disk, or a .jsonl/.parquet/.arrow file"
            )
        state = read_json(state_file)
        files = state.get("_data_files") if isinstance(state, dict) else None
        if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files
        ):
            raise ValueError(
                f'{state_file}: expected "_data_files": [{{"filename": ...}}, ...] '
                "(write the directory with Dataset.save_to_disk)"
            )
        shards = []
        for f in files:
            name = f["filename"]
            # a shard is a file of this directory: never a path that leaves it
            if Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"{state_file}: shard {name!r} must be a file name in {path}")
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: shard {name} listed in state.json is missing")
            shards.append(path / name)
        return shards

    def _open_arrow(self, pa, file: Path):
        """An IPC file (Feather v2, magic ``ARROW1``) or stream reader over a memory map."""
        source = pa.memory_map(str(file), "r")
        if source.read(6) == b"ARROW1":
            source.seek(0)
            return pa.ipc.open_file(source)
        source.seek(0)
        return pa.ipc.open_stream(source)

    def _schema(self, pa, file: Path):
        try:
            if file.suffix.lower() == ".parquet":
                return pa.parquet.ParquetFile(file).schema_arrow
            return self._open_arrow(pa, file).schema
        except (pa.ArrowException, OSError) as err:
            raise self._unreadable(
                file, err, "Parquet" if file.suffix.lower() == ".parquet" else "Arrow"
            ) from None

    def _choose_columns(self) -> tuple[list[str], dict[str, str]]:
        """The columns to read and what each becomes in a row (``column`` -> text/input_ids)."""
        pa = _pyarrow()
        schema = self._schema(pa, self._shards[0]) if self._shards else None
        if schema is None:
            return [], {}
        names = list(schema.names)
        listed = ", ".join(names) or "none"
        if self.column is not None:
            if self.column not in names:
                raise ValueError(
                    f"{self.path} has no column {self.column!r} (columns: {listed}); pass "
                    "--column with the one that holds the text or token ids"
                )
            kind = _kind(pa, schema.field(self.column).type)
            if kind is None:
                raise ValueError(
                    f"column {self.column!r} of {self.path} is {schema.field(self.column).type}; "
                    "--column must name a text (string) or token-id (list of integers) column"
                )
            return [self.column], {self.column: "text" if kind == "text" else "input_ids"}
        used = [k for k in self.keys if k in names]
        if not used:
            raise ValueError(
                f"{self.path} has none of the columns {', '.join(self.keys)} (columns: {listed}); "
                "name the column that holds the text or token ids with --column"
            )
        for key in used:
            kind = _kind(pa, schema.field(key).type)
            if kind != ("text" if key == "text" else "ids"):
                want = "text (string)" if key == "text" else "token ids (list of integers)"
                raise ValueError(
                    f"column {key!r} of {self.path} is {schema.field(key).type}, not {want}; "
                    "name another column with --column"
                )
        return used, {k: k for k in used}

    def _batches(self, pa, file: Path) -> Iterator[Any]:
        if file.suffix.lower() == ".parquet":
            parquet = pa.parquet.ParquetFile(file)
            yield from parquet.iter_batches(batch_size=self.batch_rows, columns=self._columns)
            return
        reader = self._open_arrow(pa, file)
        batches = (
            (reader.get_batch(i) for i in range(reader.num_record_batches))
            if isinstance(reader, pa.ipc.RecordBatchFileReader)
            else reader
        )
        for batch in batches:
            batch = batch.select(self._columns)
            # slices of a memory-mapped batch are views: a huge batch is converted in parts
            for lo in range(0, batch.num_rows, self.batch_rows):
                yield batch.slice(lo, self.batch_rows)

    def _table_rows(self) -> Iterator[tuple[int, dict]]:
        pa = _pyarrow()
        n = 0
        first = self._shards[0] if self._shards else None
        names = self._schema(pa, first).names if first is not None else []
        for file in self._shards:
            if file != first and self._schema(pa, file).names != names:
                raise ValueError(f"{file}: its columns differ from those of {first}")
            batches = self._batches(pa, file)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as err:
                    fmt = "Parquet" if file.suffix.lower() == ".parquet" else "Arrow"
                    raise self._unreadable(file, err, fmt) from None
                for row in batch.to_pylist():
                    for col, value in row.items():
                        if value is None:
                            raise ValueError(
                                f"{self.where(n)}: column {col!r} is null; drop or fill the "
                                "empty rows"
                            )
                    yield n, {self._rename[col]: value for col, value in row.items()}
                    n += 1

    # --- jsonl --------------------------------------------------------------------------------

    def _jsonl_rows(self) -> Iterator[tuple[int, Any]]:
        for line_no, obj in iter_jsonl(self.path, max_bytes=self.max_bytes):
            if self.column is None:
                yield line_no, obj
                continue
            if not isinstance(obj, dict) or self.column not in obj:
                raise ValueError(
                    f"{self.path}:{line_no}: no key {self.column!r} (--column names the key "
                    "that holds the text or token ids)"
                )
            value = obj[self.column]
            if isinstance(value, str):
                yield line_no, {"text": value}
            elif isinstance(value, list):
                yield line_no, {"input_ids": value}
            else:
                raise ValueError(
                    f"{self.path}:{line_no}: {self.column!r} is {json.dumps(value)[:40]}; "
                    "--column must name text (a string) or token ids (a list of integers)"
                )

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self._table_rows() if self.table else self._jsonl_rows()


__all__ = ["BATCH_ROWS", "INSTALL_HINT", "TABLE_SUFFIXES", "Records", "is_table"]
