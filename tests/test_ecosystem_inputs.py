"""Hugging Face ``datasets`` directories, Parquet and Arrow files as inputs: the same rows as a
jsonl file give identical ``measure``, ``unlearn`` and ``mine`` results (issue 17)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from unmemorize.cli.main import main
from unmemorize.data.records import Records
from unmemorize.data.sequences import iter_sequences
from unmemorize.measure import measure
from unmemorize.mining import mine
from unmemorize.models import load_model

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()  # its bars on stderr would mix with the CLI's one-line errors

pytestmark = pytest.mark.usefixtures("one_thread")


def write_all(directory: Path, name: str, columns: dict[str, list]) -> dict[str, Path]:
    """The same rows as jsonl, a ``save_to_disk`` directory (2 shards), Parquet and Arrow."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(columns.values())))
    jsonl = directory / f"{name}.jsonl"
    jsonl.write_text(
        "".join(json.dumps({k: v[i] for k, v in columns.items()}) + "\n" for i in range(n))
    )
    ds_dir = directory / f"{name}_ds"
    datasets.Dataset.from_dict(columns).save_to_disk(str(ds_dir), num_shards=2)
    parquet = directory / f"{name}.parquet"
    # small row groups: the reader streams them one record batch at a time
    pq.write_table(pa.table(columns), parquet, row_group_size=7)
    arrow = directory / f"{name}.arrow"
    with pa.OSFile(str(arrow), "wb") as f, pa.ipc.new_file(f, pa.table(columns).schema) as w:
        w.write_table(pa.table(columns), max_chunksize=5)
    return {"jsonl": jsonl, "datasets": ds_dir, "parquet": parquet, "arrow": arrow}


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory):
    mem = tiny_run.data.memorization
    root = tmp_path_factory.mktemp("inputs")
    forget_rows = [r.tolist() for r in mem.target_ids]
    retain_rows = [r.tolist() for r in tiny_run.data.train_ids[len(mem) :][:60]]
    return {
        "forget": write_all(
            root, "forget", {"input_ids": forget_rows, "id": list(range(len(mem)))}
        ),
        "retain": write_all(root, "retain", {"input_ids": retain_rows}),
        # a corpus for mine: every training row (memorized noised rows among them)
        "corpus": write_all(
            root, "corpus", {"tokens": [r.tolist() for r in tiny_run.data.train_ids]}
        ),
        "p": int(mem.prefix_len[0]),
        "k": mem.suffix_len,
    }


FORMATS = ("datasets", "parquet", "arrow")


def test_tables_read_the_same_rows_as_jsonl_in_order(inputs):
    want = list(Records(inputs["forget"]["jsonl"]))
    for fmt in FORMATS:
        rows = list(Records(inputs["forget"][fmt], keys=("input_ids",), batch_rows=3))
        assert [obj for _, obj in rows] == [{"input_ids": o["input_ids"]} for _, o in want]
        assert [n for n, _ in rows] == list(range(len(want)))  # 0-based rows across shards
    chunks = list(iter_sequences(inputs["forget"]["parquet"], None, 10**6, 4, 4, chunk_rows=4))
    assert max(len(c) for c in chunks) == 4
    assert torch.equal(
        torch.cat(chunks),
        torch.cat(list(iter_sequences(inputs["forget"]["jsonl"], None, 10**6, 4, 4))),
    )


def test_measure_is_identical_on_every_format(tiny_run, inputs):
    p, k = inputs["p"], inputs["k"]
    reports = {
        fmt: measure(tiny_run.out, sequences=path, prefix_len=p, suffix_len=k).report
        for fmt, path in inputs["forget"].items()
    }
    want = {key: v for key, v in reports["jsonl"].items() if key != "seconds"}
    assert want["n_memorized"] > 0
    for fmt in FORMATS:
        assert {key: v for key, v in reports[fmt].items() if key != "seconds"} == want, fmt


def test_unlearn_is_identical_on_every_format(tiny_run, inputs, tmp_path, capsys):
    p, k = inputs["p"], inputs["k"]
    records, weights = {}, {}
    for fmt in ("jsonl", *FORMATS[:2]):
        out = tmp_path / fmt
        torch.manual_seed(0)
        code = main(
            [
                "unlearn", "--model", str(tiny_run.out), "--method", "balanced_subnet",
                "--out", str(out), "--forget", str(inputs["forget"][fmt]),
                "--retain", str(inputs["retain"][fmt]), "--prefix-len", str(p),
                "--suffix-len", str(k), "--no-progress", "ratio=0.1", "epochs=3",
            ]
        )  # fmt: skip
        assert code == 0, capsys.readouterr()
        records[fmt] = json.loads((out / "run.json").read_text())
        weights[fmt] = (out / "model.safetensors").read_bytes()
    for fmt in FORMATS[:2]:
        for key in ("before", "after", "score", "config"):
            assert records[fmt][key] == records["jsonl"][key], (fmt, key)
        for key in ("n_forget", "n_retain", "prefix_len", "suffix_len"):
            assert records[fmt]["data"][key] == records["jsonl"]["data"][key]
        assert records[fmt]["data"]["forget"] == str(inputs["forget"][fmt])
        assert weights[fmt] == weights["jsonl"], fmt


def test_mine_is_identical_on_every_format_with_column(tiny_run, inputs):
    model, tokenizer = load_model(tiny_run.out)
    model.eval()
    results = {
        fmt: mine(model, path, 16, 16, stride=16, tokenizer=tokenizer, column="tokens")
        for fmt, path in inputs["corpus"].items()
    }
    want = results["jsonl"]
    assert want.n_kept > 0
    for fmt in FORMATS:
        got = results[fmt]
        assert torch.equal(got.input_ids, want.input_ids)
        assert torch.equal(got.score, want.score)
        assert torch.equal(got.copies, want.copies)
        drop = ("seconds",)
        assert {a: b for a, b in got.counts().items() if a not in drop} == {
            a: b for a, b in want.counts().items() if a not in drop
        }
        # sources name the table's 0-based row where jsonl names the 1-based line
        for s_got, s_want in zip(got.source, want.source, strict=True):
            _, row, offset = s_got.rsplit(":", 2)
            _, line, offset_want = s_want.rsplit(":", 2)
            assert row == f"row {int(line) - 1}" and offset == offset_want


def test_cli_mine_and_measure_read_a_datasets_directory_by_column(
    tiny_run, inputs, tmp_path, capsys
):
    out = tmp_path / "forget.jsonl"
    code = main(
        [
            "mine", "--model", str(tiny_run.out), "--corpus", str(inputs["corpus"]["datasets"]),
            "--column", "tokens", "--out", str(out), "--prefix-len", "16", "--suffix-len", "16",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    mined = [json.loads(line) for line in out.read_text().splitlines()]
    assert mined and mined[0]["source"].startswith(str(inputs["corpus"]["datasets"]) + ":row ")
    code = main(
        [
            "measure", "--model", str(tiny_run.out), "--sequences",
            str(inputs["corpus"]["parquet"]), "--column", "tokens", "--prefix-len", "16",
            "--suffix-len", "16",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert f"{len(tiny_run.data.train_ids)} sequences from" in capsys.readouterr().out


def test_text_column_is_tokenized_like_jsonl_text(tiny_run, tmp_path):
    _, tokenizer = load_model(tiny_run.out)
    texts = [tokenizer.decode(r) for r in tiny_run.data.memorization.target_ids[:5].tolist()]
    paths = write_all(tmp_path, "texts", {"body": texts})
    got = [
        torch.cat(list(iter_sequences(paths[f], tokenizer, 10**6, 3, 3, column="body")))
        for f in ("jsonl", *FORMATS)
    ]
    for other in got[1:]:
        assert torch.equal(other, got[0])


# --------------------------------------------------------------------------- bad input


def _bad(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    if kind == "missing-column":
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"ids": [[1, 2]]}), path)
        return path, ["--column", "tokens"]
    if kind == "no-known-column":
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"ids": [[1, 2]]}), path)
        return path, []
    if kind == "wrong-type":
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"score": [0.5]}), path)
        return path, ["--column", "score"]
    if kind == "unreadable":
        path = tmp_path / "t.parquet"
        path.write_bytes(b"PAR1 this is not parquet")
        return path, []
    if kind == "unreadable-arrow":
        path = tmp_path / "t.arrow"
        path.write_bytes(b"garbage garbage garbage")
        return path, []
    if kind == "dataset-dict":
        datasets.DatasetDict(train=datasets.Dataset.from_dict({"input_ids": [[1]]})).save_to_disk(
            str(tmp_path / "dd")
        )
        return tmp_path / "dd", []
    if kind == "plain-directory":
        (tmp_path / "plain").mkdir()
        return tmp_path / "plain", []
    if kind == "null-row":
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({"input_ids": [[1] * 40, None]}), path)
        return path, []
    if kind == "jsonl-missing-key":
        path = tmp_path / "t.jsonl"
        path.write_text('{"input_ids": [1, 2]}\n')
        return path, ["--column", "tokens"]
    raise AssertionError(kind)


BAD = {
    "missing-column": ("has no column 'tokens' (columns: ids); pass --column", "t.parquet"),
    "no-known-column": ("has none of the columns", "--column"),
    "wrong-type": ("column 'score' of", "is double; --column must name a text"),
    "unreadable": ("is not a readable Parquet file", "t.parquet"),
    "unreadable-arrow": ("is not a readable Arrow file", "t.arrow"),
    "dataset-dict": ("is a DatasetDict (splits: train); pass one split's directory", "dd"),
    "plain-directory": ("not a datasets directory", "save_to_disk"),
    "null-row": ("t.parquet:row 1: column 'input_ids' is null", "drop or fill"),
    "jsonl-missing-key": ("t.jsonl:1: no key 'tokens'", "--column names"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_tables_are_one_line_errors(tiny_run, tmp_path, capsys, kind):
    path, extra = _bad(tmp_path, kind)
    code = main(
        [
            "measure", "--model", str(tiny_run.out), "--sequences", str(path), "--prefix-len",
            "16", "--suffix-len", "16", *extra,
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unmemorize: error: ") and err.count("\n") == 1, err
    for part in BAD[kind]:
        assert part in err, err


def test_a_missing_pyarrow_says_which_extra_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2]]}), path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(Exception, match=r'pip install "unmemorize\[datasets\]"'):
        Records(path)


# ----------------------------------------------------------------- cards and replay of train


def test_train_writes_a_card_and_replays_from_experiment_json(tiny_run, tmp_path, capsys):
    from huggingface_hub import ModelCard

    card = ModelCard.load(tiny_run.out / "README.md")
    assert {"unmemorize", "train", "tinymem", "increment"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from scratch
    assert "| memorized_fraction |" in card.text
    out = tmp_path / "again"
    argv = ["train", "--config", str(tiny_run.out / "experiment.json"), "--out", str(out)]
    assert main([*argv, "--no-progress", "train.epochs=2"]) == 0, capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    want = json.loads((tiny_run.out / "experiment.json").read_text())
    want["train"]["epochs"] = 2
    assert record["config"] == want
    assert record["command"]["overrides"] == ["train.epochs=2"]
    assert record["command"]["experiment"] == json.loads(
        (tiny_run.out / "experiment.json").read_text()
    )
