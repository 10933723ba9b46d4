"""The audit in the product (issue 15): `unmemorize audit` on a TinyMem run and on an unlearn
output, `unlearn --audit`, `demo --audit`, `sweep --audit`, TinyMem's fresh noised twins, the
report's removal card, and bad input (one line, exit status 2)."""

from __future__ import annotations

import json

import pytest
import torch

from unmemorize.audit import AUDIT_KEYS
from unmemorize.benchmarks.tinymem.audit_sets import fresh_noised_twins, tinymem_audit_sets
from unmemorize.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

#: A cheap audit: one short relearning run per attack, one quantization.
FAST = ["--relearn-lrs", "1e-3", "--relearn-steps", "3", "--quant-dtypes", "int8"]
FAST_FLAG = ["--audit-relearn-lrs", "1e-3", "--audit-relearn-steps", "3",
             "--audit-quant-dtypes", "int8"]  # fmt: skip


def test_fresh_noised_twins_share_the_clean_prefix_and_were_never_trained_on(tiny_run):
    data = tiny_run.data
    sets = tinymem_audit_sets(data)
    holdout = sets["holdout_ids"]
    mem = data.memorization
    keep = mem.window_differs()
    assert torch.equal(sets["forget_ids"], mem.target_ids[keep])
    assert len(holdout) > len(sets["forget_ids"])  # two draws per candidate, few dropped
    trained = {row.numpy().tobytes() for row in data.train_ids}
    assert not any(row.numpy().tobytes() in trained for row in holdout)
    p = int(mem.prefix_len[0])
    prefixes = {row[:p].numpy().tobytes() for row in sets["prompt_ids"]}
    assert all(row[:p].numpy().tobytes() in prefixes for row in holdout)
    assert torch.equal(holdout, fresh_noised_twins(data))  # seeded
    assert not torch.equal(holdout, fresh_noised_twins(data, seed=1))
    assert sets["retain_ids"].shape[0] + int(keep.sum()) <= data.train_ids.shape[0] + len(mem)


def test_audit_cli_on_a_tinymem_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(tiny_run.out), "--out", str(out), "--no-progress", *FAST])
    printed = capsys.readouterr().out
    assert code == 0, printed
    audit = json.loads((out / "audit.json").read_text())
    assert list(audit) == list(AUDIT_KEYS)
    assert all(audit[key] is not None for key in AUDIT_KEYS)
    # a training run audits itself: the original is the model, so nothing "returns" that was
    # not there; the memorizing model is clearly a member
    assert audit["exact"]["memorized_fraction"] == audit["exact"]["original_memorized_fraction"]
    assert audit["mia"]["auc"]["loss"] > 0.8
    assert audit["mia"]["n_nonmembers"] > audit["mia"]["n_members"]
    rows = (out / "audit_rows.jsonl").read_text().splitlines()
    assert len(rows) == audit["exact"]["n_sequences"]
    assert "returns after relearning" in printed and "MIA AUC" in printed
    assert "Removal card" in printed


def test_unlearn_audit_then_audit_the_output_and_report_the_card(tiny_run, tmp_path, capsys):
    out = tmp_path / "edited"
    argv = ["unlearn", "--model", str(tiny_run.out), "--method", "balanced_subnet", "--out",
            str(out), "--no-progress", "--audit", *FAST_FLAG, "ratio=0.1"]  # fmt: skip
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads((out / "run.json").read_text())
    assert record["sources"]["model"] == str(tiny_run.out.resolve())
    audit = json.loads((out / "audit.json").read_text())
    assert list(audit) == list(AUDIT_KEYS)
    # the audit's exact check agrees with unlearn's own after-measurement
    assert audit["exact"]["n_memorized"] == record["after"]["n_memorized"]
    assert audit["exact"]["original_memorized_fraction"] == pytest.approx(
        record["before"]["memorized_fraction"]
    )
    assert audit["relearn"]["config"]["lrs"] == [1e-3]
    assert "audit:" in printed and "returns after relearning" in printed

    # `unmemorize audit` finds the original and the sets of an unlearn output by itself
    again = tmp_path / "again"
    assert main(["audit", "--model", str(out), "--out", str(again), "--no-progress", *FAST]) == 0
    second = json.loads((again / "audit.json").read_text())
    for key in ("n_memorized", "original_memorized_fraction"):
        assert second["exact"][key] == audit["exact"][key], key

    from unmemorize.report import build_report

    paths = build_report([out, again], tmp_path / "report")
    text = paths.markdown.read_text()
    assert text.count("Removal card: attacks") == 2
    assert "relearning on half the forget set" in text and "int8" in text
    assert "How to read the removal card" in text
    sections = paths.sections
    assert sections[0].kind == "unlearn" and sections[1].kind == "audit"


def test_audit_cli_on_sequence_files(tiny_run, tmp_path):
    """Any model with --forget/--holdout/--retain files (and an unlearn output of them)."""
    data = tiny_run.data
    sets = tinymem_audit_sets(data)

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
        return path

    from unmemorize.audit import AuditSets

    audited = AuditSets(**sets).audited_ids()  # clean prefix + memorized suffix
    forget = write("forget.jsonl", audited[:, :32])
    holdout = write("holdout.jsonl", sets["holdout_ids"][:, :32])
    retain = write("retain.jsonl", sets["retain_ids"][:64, :32])
    out = tmp_path / "audit"
    code = main(["audit", "--model", str(tiny_run.out), "--forget", str(forget), "--holdout",
                 str(holdout), "--retain", str(retain), "--prefix-len", "16", "--suffix-len",
                 "16", "--out", str(out), "--no-progress", "--checks", "exact,mia,utility"])  # fmt: skip
    assert code == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["relearn"] is None and audit["quantization"] is None
    assert audit["utility"]["rows"] == "retain"
    assert 0 <= audit["mia"]["auc"]["min_k"] <= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checks", "exacct"], "did you mean 'exact'"),
        (["--relearn-lrs", "fast"], "--relearn-lrs takes comma-separated numbers"),
        (["--quant-dtypes", "int3"], "quantization dtype"),
        (["--forget", "{tmp}/missing.jsonl"], "--forget {tmp}/missing.jsonl: no such file"),
        (["--holdout", "{tmp}/h.jsonl"], "--holdout {tmp}/h.jsonl: no such file"),
    ],
)
def test_audit_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code = main(["audit", "--model", str(tiny_run.out), "--out", str(tmp_path / "a"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("unmemorize: error:")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "a" / "audit.json").exists()


def test_audit_refuses_a_model_without_sets_and_audit_options_without_audit(tmp_path, capsys):
    from unmemorize.data.tokenizers import math_tokenizer
    from unmemorize.models import ModelConfig, build_model_for, save_model

    plain = tmp_path / "plain"
    tok = math_tokenizer()
    model = build_model_for(ModelConfig(n_layers=1, d_model=16, n_heads=2, context_length=16), tok)
    save_model(model, tok, plain)
    assert main(["audit", "--model", str(plain), "--out", str(tmp_path / "a")]) == 2
    assert "pass --forget FILE" in capsys.readouterr().err
    code = main(["unlearn", "--model", str(plain), "--method", "ga", "--out",
                 str(tmp_path / "u"), "--audit-checks", "exact"])  # fmt: skip
    assert code == 2
    assert "--audit-checks needs --audit" in capsys.readouterr().err
    code = main(["demo", "--out", str(tmp_path / "d"), "--audit", "--audit-checks", "nope"])
    assert code == 2 and "audit check" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before any work


@pytest.mark.slow
def test_demo_audit_adds_the_columns_and_the_cards(tmp_path, capsys):
    from .conftest import TINY_OVERRIDES

    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--no-progress", "--methods", "balanced_subnet,ga",
            "--audit", *FAST_FLAG, *TINY_OVERRIDES]  # fmt: skip
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "returns after relearning" in printed and "MIA AUC" in printed
    assert "audit time" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["n_audited"] == 3  # the unedited model and two methods
    assert summary["baseline"]["audit"]["returned_fraction"] is None  # no relearning there
    for name, row in summary["methods"].items():
        card = row["audit"]
        assert card["memorized_fraction"] == pytest.approx(row["memorized_fraction"]), name
        assert card["relearn_lrs"] == [1e-3]
        assert (out / "audit" / name / "audit.json").is_file()
    assert (out / "audit" / "before" / "audit.json").is_file()

    from unmemorize.report import build_report

    text = build_report([out], tmp_path / "report").markdown.read_text()
    assert "Removal card per method" in text and "(before)" in text


@pytest.mark.slow
def test_sweep_audit_ranks_by_the_audited_score(tiny_run, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", str(tiny_run.out), "--methods", "balanced_subnet", "--workers",
            "1", "--no-progress", "--out", str(out), "--audit", "--rank-by", "audited",
            *FAST_FLAG]  # fmt: skip
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"]["rank_by"] == "audited"
    for row in summary["runs"]:
        back = row["audit"]["returned_fraction"]
        assert row["score"] == pytest.approx(row["unaudited_score"] + back)
        assert (out / "trials" / row["trial"] / "audit.json").is_file()
    assert "returns after relearning" in printed
