"""`unmemorize unlearn`, `ls methods` and the unlearning data built from a TinyMem run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unmemorize.benchmarks.tinymem.unlearn_data import artifact_rows, tinymem_unlearn_data
from unmemorize.cli.main import main
from unmemorize.methods import METHODS, NothingToUnlearnError
from unmemorize.metrics import measure_memorization
from unmemorize.models import save_model


def file_digest(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_tinymem_unlearn_data_forgets_exactly_the_memorized_rows(tiny_run) -> None:
    data = tiny_run.data
    ud, report = tinymem_unlearn_data(tiny_run.model, data)
    idx = report.memorized_indices()
    assert ud.n_forget == len(idx) > 0
    assert torch.equal(ud.forget_ids, data.memorization.target_ids[idx])
    assert torch.equal(ud.forget_clean_ids, data.memorization.prompt_ids[idx])
    assert torch.equal(ud.forget_prefix_len, data.memorization.prefix_len[idx])
    # the retain set is the clean training rows: no noised row at all, every clean row
    noised = {r.numpy().tobytes() for r in data.memorization.target_ids}
    assert not any(r.numpy().tobytes() in noised for r in ud.retain_ids)
    assert ud.n_retain == int((~artifact_rows(data)).sum())
    assert ud.n_retain == len(data.train_ids) - len(data.memorization)
    mask = ud.continuation_mask()
    first = int(ud.forget_prefix_len[0])
    assert not mask[0, : first - 1].any() and mask[0, first - 1 :].all()


def test_tinymem_unlearn_data_refuses_a_model_that_memorizes_nothing(tiny_run) -> None:
    from unmemorize.benchmarks.tinymem.experiment import new_model

    fresh = new_model(tiny_run.experiment, tiny_run.tokenizer)
    with pytest.raises(NothingToUnlearnError, match=r"nothing is memorized: 0 of \d+"):
        tinymem_unlearn_data(fresh, tiny_run.data)


def test_unlearn_cli_writes_model_and_run_json_and_keeps_input(tiny_run, tmp_path, capsys):
    before = file_digest(tiny_run.out)
    out = tmp_path / "edited"
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_run.out),
            "--method",
            "balanced_subnet",
            "--out",
            str(out),
            "--no-progress",
            "ratio=0.1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert file_digest(tiny_run.out) == before  # the input model directory is untouched
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "balanced_subnet" and record["config"]["ratio"] == 0.1
    assert record["after"]["n_memorized"] < record["before"]["n_memorized"]
    assert record["data"]["n_forget"] == record["before"]["n_memorized"]
    assert record["score"] < 0
    assert "memorized" in printed and "score" in printed
    # the output is a TinyMem run again: measure works on it without --sequences
    assert main(["measure", "--model", str(out)]) == 0
    from unmemorize.benchmarks.tinymem.experiment import load_run

    model, _, data = load_run(out)
    report = measure_memorization(model, data.memorization)
    assert report.n_memorized == record["after"]["n_memorized"]


def test_unlearn_writes_a_model_card_and_replays_from_its_run_json(tiny_run, tmp_path, capsys):
    """Issue 17: OUT/README.md is a Hugging Face model card naming the base model and the method,
    with the metrics before and after; `unlearn --config OUT/run.json` reruns the same edit."""
    from huggingface_hub import ModelCard

    from unmemorize.model_card import add_audit_section

    out = tmp_path / "edited"
    argv = ["unlearn", "--model", str(tiny_run.out), "--method", "balanced_subnet"]
    code = main([*argv, "--out", str(out), "--no-progress", "ratio=0.1", "epochs=5"])
    assert code == 0, capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    card = ModelCard.load(out / "README.md")  # a local file: no network
    meta = card.data.to_dict()
    assert meta["base_model"] == str(tiny_run.out)
    assert meta["library_name"] == "transformers"
    assert {"unmemorize", "unlearn", "balanced_subnet"} <= set(meta["tags"])
    assert "| metric | before | after |" in card.text
    before, after = record["before"], record["after"]
    row = f"| n_memorized | {before['n_memorized']} | {after['n_memorized']} |"
    assert row in card.text
    assert f"| memorized_fraction | {before['memorized_fraction']:.4g} |" in card.text
    assert '"ratio": 0.1' in card.text  # the method's resolved config
    assert record["command"] == {
        "name": "unlearn",
        "options": {"model": str(tiny_run.out), "method": "balanced_subnet"},
        "overrides": ["ratio=0.1", "epochs=5"],
    }

    # an audit written into the directory later adds a short audit card
    (out / "audit.json").write_text(json.dumps({"exact": {"n_extracted": 0, "rate": 0.0}}))
    assert add_audit_section(out)
    audited = ModelCard.load(out / "README.md")
    assert "## Audit" in audited.text and "**exact**: n_extracted 0, rate 0" in audited.text
    assert audited.data.to_dict() == meta

    # replay: the same edit, bit for bit; an override beside --config wins
    again = tmp_path / "again"
    assert main(["unlearn", "--config", str(out / "run.json"), "--out", str(again)]) == 0
    replayed = json.loads((again / "run.json").read_text())
    assert replayed["after"] == after and replayed["config"] == record["config"]
    weights = "model.safetensors"
    assert (again / weights).read_bytes() == (out / weights).read_bytes()
    other = tmp_path / "other"
    argv = ["unlearn", "--config", str(out / "run.json"), "--out", str(other), "ratio=0.05"]
    assert main([*argv, "--no-progress"]) == 0
    assert json.loads((other / "run.json").read_text())["config"]["ratio"] == 0.05


def test_unlearn_with_sequence_files(tiny_run, tmp_path, capsys) -> None:
    mem = tiny_run.data.memorization
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in mem.target_ids))
    retain = tmp_path / "retain.jsonl"
    rows = tiny_run.data.train_ids[len(mem) :][:200]
    retain.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    out = tmp_path / "edited"
    p = int(mem.prefix_len[0])
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_run.out),
            "--method",
            "balanced_subnet",
            "--out",
            str(out),
            "--forget",
            str(forget),
            "--retain",
            str(retain),
            "--prefix-len",
            str(p),
            "--suffix-len",
            str(mem.suffix_len),
            "--no-progress",
            "ratio=0.1",
        ]
    )
    assert code == 0, capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    # 10% of the retain file is held out to measure utility, never trained on (issue 14 item 5)
    assert record["data"]["n_retain"] == 180
    assert record["data"]["utility_rows"] == "held-out 10% of --retain (20 rows)"
    assert 0 < record["data"]["n_forget"] <= len(mem)
    assert record["after"]["n_memorized"] < record["before"]["n_memorized"]
    assert "perplexity" in record["after"] and record["score"] is not None


def test_ls_methods_lists_every_method_with_paper_and_options(capsys) -> None:
    assert main(["ls", "methods"]) == 0
    printed = capsys.readouterr().out
    for name in METHODS.names():
        assert f"{name}  [" in printed
    assert "ratio = " in printed and "paper:" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "balanced_subnt"], "did you mean 'balanced_subnet'"),
        (["--method", "durable", "rato=0.1"], "did you mean 'ratio'"),
        (["--method", "durable", "ratio=1.5"], "ratio must lie strictly between 0 and 1"),
        (["--method", "durable", "ratio=abc"], "expected a number"),
        (["--method", "durable", "--prefix-len", "4"], "apply to --forget"),
    ],
)
def test_unlearn_bad_input_is_one_line(tiny_run, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "out"
    code = main(["unlearn", "--model", str(tiny_run.out), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_unlearn_refuses_to_overwrite_its_input_or_a_full_out(tiny_run, tmp_path, capsys):
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_run.out),
            "--method",
            "durable",
            "--out",
            str(tiny_run.out),
            "--overwrite",
        ]
    )
    assert code == 2 and "must differ from --model" in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code = main(
        ["unlearn", "--model", str(tiny_run.out), "--method", "durable", "--out", str(full)]
    )
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (full / "keep.txt").read_text() == "mine"


def test_unlearn_nothing_memorized_reports_the_figure(tiny_run, tmp_path, capsys) -> None:
    from unmemorize.benchmarks.tinymem.experiment import new_model

    fresh_dir = tmp_path / "fresh"
    fresh = new_model(tiny_run.experiment, tiny_run.tokenizer)
    save_model(fresh, tiny_run.tokenizer, fresh_dir)
    import shutil

    shutil.copytree(tiny_run.out / "data", fresh_dir / "data")
    code = main(
        ["unlearn", "--model", str(fresh_dir), "--method", "durable", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "nothing is memorized: 0 of" in err and "nothing to unlearn" in err


def test_unlearn_unsupported_architecture_names_the_families(tmp_path, capsys) -> None:
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(
        OPTConfig(
            vocab_size=14,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
        )
    )
    from unmemorize.data.tokenizers import math_tokenizer

    save_model(model, math_tokenizer(), tmp_path / "opt")
    forget = tmp_path / "f.jsonl"
    forget.write_text(json.dumps({"input_ids": [3] * 12}) + "\n")
    code = main(
        [
            "unlearn",
            "--model",
            str(tmp_path / "opt"),
            "--method",
            "durable",
            "--out",
            str(tmp_path / "o"),
            "--forget",
            str(forget),
            "--prefix-len",
            "4",
            "--suffix-len",
            "4",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Supported MLP layouts" in err and "To add a family" in err, err


def test_a_diverging_method_writes_nothing(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    code = main(
        [
            "unlearn",
            "--model",
            str(tiny_run.out),
            "--method",
            "finetune_extra",
            "--out",
            str(out),
            "--no-progress",
            "lr=1e30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and ("diverged" in err or "non-finite" in err), err
    assert not out.exists()


def test_unlearn_paper_settings_fine_tunes_from_the_training_optimizer(tiny_run, tmp_path, capsys):
    """Issue 14: `unlearn --settings paper` fine-tunes as the original did, continuing the run's
    training optimizer; run.json says so (the default starts a fresh AdamW)."""
    for settings, how in (("paper", "resumed from training"), ("default", "fresh")):
        out = tmp_path / settings
        argv = ["unlearn", "--model", str(tiny_run.out), "--method", "finetune_clean"]
        code = main([*argv, "--settings", settings, "--out", str(out), "--no-progress", "epochs=1"])
        assert code == 0, capsys.readouterr()
        record = json.loads((out / "run.json").read_text())
        assert record["settings"] == settings
        assert record["result"]["info"]["optimizer"] == how
