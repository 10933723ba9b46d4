"""Issue 14 regressions: what a method trains on is never what it is judged on."""

from __future__ import annotations

import torch

from unmemorize.benchmarks.tinymem.data import TinyMemData
from unmemorize.benchmarks.tinymem.math_data import MathDataConfig, make_math_data
from unmemorize.benchmarks.tinymem.unlearn_data import tinymem_unlearn_data
from unmemorize.methods import build_method
from unmemorize.metrics.memorization import MemorizationReport

SMALL = dict(
    num_main=600, num_extra=200, num_test=100, num_noise=100, extra_ks=(2, 3), context_length=150
)


def _all_memorized(data: TinyMemData) -> MemorizationReport:
    m = len(data.memorization)
    return MemorizationReport(
        memorized=torch.ones(m, dtype=torch.bool),
        candidate=torch.ones(m, dtype=torch.bool),
        group=data.memorization.group,
    )


def _rows(t: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in t}


def test_backdoor_finetune_clean_never_trains_on_the_held_out_attack_rows(tmp_path) -> None:
    data = make_math_data(MathDataConfig(variant="backdoor", seed=0, **SMALL))
    TinyMemData.save(data, tmp_path)  # the twins survive a save/load round trip
    data = TinyMemData.load(tmp_path)
    unlearn, _ = tinymem_unlearn_data(None, data, report=_all_memorized(data))
    held_out = _rows(data.memorization.prompt_ids)  # clean twins of the ASR rows
    n_poison = data.info["n_poison_train"]
    for name in ("finetune_clean", "finetune_both"):
        rows = _rows(build_method(name).training_rows(unlearn))
        assert not rows & held_out, name
    # the clean recipe trains on the clean twins of the poisoned training rows, all of them
    clean = build_method("finetune_clean").training_rows(unlearn)
    assert len(clean) == n_poison
    # each twin starts like its poisoned training row and differs after the trigger
    poisoned = data.train_ids[:n_poison]
    assert torch.equal(clean[:, :3], poisoned[:, :3])
    assert bool((clean != poisoned).any(dim=1).all())


def test_noise_finetune_clean_twins_memorized_by_default_all_noised_rows_on_request() -> None:
    data = make_math_data(MathDataConfig(seed=0, **SMALL))
    report = _all_memorized(data)
    report.memorized[1::2] = False  # half memorized
    default, _ = tinymem_unlearn_data(None, data, report=report)
    paper, _ = tinymem_unlearn_data(None, data, report=report, noise_twins="all")
    method = build_method("finetune_clean")
    assert torch.equal(method.training_rows(default), data.memorization.prompt_ids[0::2])
    assert torch.equal(method.training_rows(paper), data.memorization.prompt_ids)


def test_unlearn_files_without_eval_measure_utility_on_held_out_retain_rows(
    tiny_run, tmp_path, monkeypatch
) -> None:
    import json

    import unmemorize.unlearn as unlearn_mod

    mem = tiny_run.data.memorization
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in mem.target_ids))
    retain = tmp_path / "retain.jsonl"
    rows = tiny_run.data.train_ids[len(mem) :][:50]
    retain.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    measured: list[torch.Tensor] = []
    real = unlearn_mod.accuracy_and_perplexity

    def spy(model, ids, *args, **kwargs):
        measured.append(ids)
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(unlearn_mod, "accuracy_and_perplexity", spy)
    setup = unlearn_mod.prepare(
        tiny_run.out,
        forget=forget,
        retain=retain,
        prefix_len=int(mem.prefix_len[0]),
        suffix_len=mem.suffix_len,
    )
    (eval_ids,) = measured
    assert len(eval_ids) == 5 and setup.data.n_retain == 45
    assert not _rows(eval_ids) & _rows(setup.data.retain_ids)
    assert setup.source["utility_rows"] == "held-out 10% of --retain (5 rows)"
