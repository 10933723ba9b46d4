"""``unmemorize eval``: lm-evaluation-harness tasks over a local file, offline; the missing extra."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from unmemorize.benchmarks.restor.world import word_tokenizer
from unmemorize.cli import main
from unmemorize.models import save_model

has_lm_eval = importlib.util.find_spec("lm_eval") is not None

WORDS = "the cat sat on mat dog ran to park red blue green".split()
ROWS = [
    {"q": "the cat sat on the", "choices": ["mat", "park", "dog"], "label": 0},
    {"q": "the dog ran to the", "choices": ["park", "mat", "cat"], "label": 0},
    {"q": "red blue", "choices": ["green", "cat", "sat"], "label": 0},
    {"q": "the cat ran to the", "choices": ["park", "red", "on"], "label": 0},
]


def _model(path, seed: int):
    tok = word_tokenizer(WORDS)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=1, eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    save_model(GPT2LMHeadModel(config), tok, path)
    return path


def _task(root):
    """A harness task YAML whose data set is a local jsonl file (no hub)."""
    root.mkdir()
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (root / "toy.yaml").write_text(
        "task: toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return root


def test_missing_extra_is_one_line_naming_pip(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a)
    )
    out = tmp_path / "e"
    code = main(["eval", "--model", str(tmp_path), "--tasks", "hellaswag", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "unmemorize: error: unmemorize eval needs lm-evaluation-harness (lm_eval): "
        'pip install "unmemorize[lmeval]"'
    )
    assert not out.exists()


@pytest.mark.skipif(not has_lm_eval, reason='lm_eval missing: pip install "unmemorize[lmeval]"')
def test_eval_local_task_on_edited_and_original(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from unmemorize.audit.harness import harness_scores

    edited, original = _model(tmp_path / "edited", 1), _model(tmp_path / "orig", 2)
    tasks = _task(tmp_path / "tasks")
    out = tmp_path / "eval"
    code = main(
        ["eval", "--model", str(edited), "--original", str(original), "--tasks", "toy_mc"]
        + ["--include-path", str(tasks), "--out", str(out), "--batch-size", "4"]
    )
    assert code == 0, capsys.readouterr().err
    assert "toy_mc" in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    acc = report["results"]["toy_mc"]["acc"]
    assert acc["higher_is_better"] is True
    assert acc["edited"] in {0.0, 0.25, 0.5, 0.75, 1.0}  # 4 rows
    assert acc["change"] == pytest.approx(acc["edited"] - acc["original"])
    # the same numbers as the harness run on each model alone
    alone = harness_scores(original, ["toy_mc"], include_path=tasks, batch_size=4)
    assert alone["toy_mc"]["acc"]["value"] == acc["original"]

    code = main(["eval", "--model", str(edited), "--tasks", "no_such_task", "--out", str(out)]
                + ["--include-path", str(tasks), "--overwrite"])  # fmt: skip
    assert code == 2
