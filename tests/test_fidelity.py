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


# ------------------------------------------------------------------------------ --settings paper


def test_paper_settings_reach_every_point_and_default_changes_nothing() -> None:
    from unmemorize.benchmarks import get_benchmark
    from unmemorize.benchmarks.runner import grid_jobs

    bench = get_benchmark("tinymem")
    default, paper = bench.get_settings(), bench.get_settings("paper")
    demo = bench.space("demo")
    assert grid_jobs(demo, None, default) == grid_jobs(demo)
    jobs = grid_jobs(bench.space(paper.space_name("demo")), ["balanced_subnet"], paper)
    assert jobs and all(
        o["lr"] == 0.1 and o["lr_schedule"] == "constant" and o["batch_size"] == 64 for _, o in jobs
    )
    full = bench.space(paper.space_name("cpu-mini"))
    assert max(full["balanced_subnet"]["ratio"]) == 0.9
    assert full["balanced_subnet"]["epochs"] == [1, 10, 30]
    assert full["integrated_gradients"]["ig_steps"] == [20]
    assert paper.switches == {
        "legacy_accuracy": True,
        "retain": "all",
        "noise_twins": "all",
        "finetune_optimizer": "resumed",
    }


def test_restor_paper_settings_config_and_methods() -> None:
    from unmemorize.benchmarks.restor.pipeline import make_restor_config, resolve_grid

    cfg = make_restor_config(settings="paper", overrides=["corrupt.epochs=2"])
    assert (cfg.corrupt.mode, cfg.corrupt.lora_rank, cfg.corrupt.lr) == ("lora", 8, 5e-5)
    assert cfg.corrupt.epochs == 2  # the user's override wins
    assert cfg.corrupt.holdout == 0.1 and cfg.eval.val_fraction == 0.1
    assert make_restor_config().corrupt.mode == "full"
    grid = resolve_grid(None, None, "paper")
    assert all(p["ratio"] == "batch_mean" and p["weight_decay"] == 0.1 for p in grid["npo"])
    assert all(p["divergence"] == "cross_entropy" for p in grid["kl"])
    assert resolve_grid(None, None) == resolve_grid(None, None, "default")


def test_sweep_paper_settings_in_the_space_and_default_id_unchanged() -> None:
    import hashlib
    import json

    from unmemorize.sweep import make_spec

    spec = make_spec(["subnet"], space="cpu-mini", settings="paper")
    assert spec.settings == "paper" and spec.space["subnet"]["lr"] == 0.1
    assert max(spec.space["subnet"]["ratio"]) == 0.9  # cpu-mini -> the paper grid
    plain = make_spec(["subnet"])
    fields = plain.to_dict()
    del fields["settings"]
    old_id = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.sweep_id == old_id  # sweeps written before --settings still resume


def test_paper_counts_of_greedy_and_durable_agg_use_all_parameters() -> None:
    from .test_methods_contract import tiny_data
    from .zoo import make_model

    data = tiny_data()
    for name, option in (("greedy", "count_over"), ("durable_agg", "rank_over")):
        counts = {}
        for scope in ("mlp", "all"):
            model = make_model("gpt2")
            extra = ["weights_per_step=50"] if name == "greedy" else []
            method = build_method(name, ["ratio=0.01", f"{option}={scope}", *extra])
            counts[scope] = method.apply(model, data).changed_count
        assert counts["all"] != counts["mlp"], (name, counts)
    model = make_model("gpt2")
    method = build_method("greedy", ["ratio=0.01", "count_over=all", "weights_per_step=50"])
    total = sum(p.numel() for p in model.parameters())
    assert method.apply(model, data).changed_count == int(0.01 * total)


def test_hard_concrete_checks_the_stop_every_n_epochs_only() -> None:
    from .test_methods_contract import tiny_data
    from .zoo import make_model

    base = ["epochs=12", "stop_loss=10.0", "ratio=0.1"]  # the penalty is below 10 at once
    every = build_method("hard_concrete", base).apply(make_model("gpt2"), tiny_data())
    tenth = build_method("hard_concrete", [*base, "check_epochs=10"]).apply(
        make_model("gpt2"), tiny_data()
    )
    assert every.info["steps"] == 0 and every.info["early_stop"]
    assert tenth.info["steps"] == 10 and tenth.info["early_stop"]


def _tiny_gpt(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def test_finetune_resumes_the_training_optimizer_as_if_training_went_on() -> None:
    """Resuming = one more step of the very optimizer that trained the model (the original's
    recipe); a fresh AdamW takes another step. The data's state is not changed by a run."""
    import copy

    from unmemorize.methods.finetune import FinetuneConfig, finetune_rows_
    from unmemorize.metrics.losses import sequence_losses

    model = _tiny_gpt()
    rows = torch.randint(0, 20, (8, 12), generator=torch.Generator().manual_seed(1))
    config = FinetuneConfig(epochs=1, batch_size=8, lr=1e-3)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=config.betas
    )
    model.train()
    for _ in range(3):  # "training"
        optimizer.zero_grad()
        sequence_losses(model, rows, None).mean().backward()
        optimizer.step()
    state = copy.deepcopy(optimizer.state_dict())
    kept = copy.deepcopy(state)
    resumed, fresh = copy.deepcopy(model), copy.deepcopy(model)
    optimizer.zero_grad()  # training goes on for one step
    sequence_losses(model, rows, None).mean().backward()
    optimizer.step()
    finetune_rows_(resumed, rows, None, config, "finetune_clean", optimizer_state=state)
    finetune_rows_(fresh, rows, None, config, "finetune_clean")
    pairs = list(zip(model.parameters(), resumed.parameters(), fresh.parameters(), strict=True))
    for want, got, _ in pairs:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert any(not torch.allclose(want, other) for want, _, other in pairs)
    for index, moments in kept["state"].items():
        assert torch.equal(state["state"][index]["exp_avg"], moments["exp_avg"])
    assert state["state"][0]["step"] == kept["state"][0]["step"]


def test_finetune_refuses_an_optimizer_state_of_another_model() -> None:
    import pytest

    from unmemorize.methods.finetune import FinetuneConfig, finetune_rows_

    other = torch.nn.Linear(3, 2)
    state = torch.optim.AdamW(other.parameters()).state_dict()
    rows = torch.randint(0, 20, (4, 12))
    with pytest.raises(ValueError, match="not written by this model's training"):
        finetune_rows_(
            _tiny_gpt(), rows, None, FinetuneConfig(epochs=1), "x", optimizer_state=state
        )


def test_paper_settings_fine_tune_from_the_runs_final_optimizer_state(tiny_run) -> None:
    """``--settings paper`` continues from the training checkpoint's AdamW, as the original
    fine-tuning did; the default starts afresh; a run without its final checkpoint falls back."""
    import shutil

    from unmemorize.benchmarks.tinymem.benchmark import TinyMemBenchmark
    from unmemorize.benchmarks.tinymem.experiment import training_optimizer_state
    from unmemorize.benchmarks.tinymem.train import latest_checkpoint

    bench = TinyMemBenchmark()
    paper = bench.load(str(tiny_run.out), settings="paper")
    default = bench.load(str(tiny_run.out))
    state = paper.data.finetune_optimizer_state
    assert state is not None and default.data.finetune_optimizer_state is None
    final = torch.load(latest_checkpoint(tiny_run.out) / "optimizer.pt", weights_only=True)
    assert state["state"][0]["step"] == final["state"][0]["step"] > 0
    edit = build_method("finetune_both", {"epochs": 1}).apply(paper.model, paper.data)
    assert edit.info["optimizer"] == "resumed from training"
    edit = build_method("finetune_both", {"epochs": 1}).apply(default.model, default.data)
    assert edit.info["optimizer"] == "fresh"

    # a copy of the run whose final checkpoint is gone: no state, never an older epoch's
    run = tiny_run.out.parent / "run-without-final-checkpoint"
    shutil.copytree(tiny_run.out, run)
    shutil.rmtree(latest_checkpoint(run))
    assert training_optimizer_state(run) is None
