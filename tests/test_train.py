"""Training: exact resume, NaN handling, regularizers in the loop, run directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from unmemorize.benchmarks.tinymem.experiment import (
    build_data,
    make_experiment,
    new_model,
    train_experiment,
)
from unmemorize.benchmarks.tinymem.train import TrainConfig, latest_checkpoint, train
from unmemorize.models import load_model
from unmemorize.training import TrainingDivergedError

SMALL = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.context_length=48",
    "data.context_length=48",
    "data.num_main=160",
    "data.num_test=40",
    "data.num_noise=20",
    "data.prefix_len=16",
    "data.suffix_len=16",
    "train.epochs=4",
    "train.batch_size=32",
    "train.checkpoint_every=1",
    "train.eval_batch_size=64",
]


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def exp_data():
    exp = make_experiment("cpu-mini", "increment", "noise", SMALL)
    data, tok = build_data(exp)
    return exp, data, tok


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_crash_is_bit_identical(exp_data, tmp_path, schedule):
    exp, data, tok = exp_data
    cfg = TrainConfig(**{**exp.train.__dict__, "lr_schedule": schedule})
    straight = train(new_model(exp, tok), data, cfg, tmp_path / "a", progress=False)

    def crash_at_2(record):
        if record["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train(
            new_model(exp, tok), data, cfg, tmp_path / "b", progress=False, on_checkpoint=crash_at_2
        )
    assert latest_checkpoint(tmp_path / "b").name == "epoch-000002"
    resumed = train(new_model(exp, tok), data, cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from_epoch == 2
    a, b = _weights(straight.model), _weights(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(exp_data, tmp_path):
    exp, data, tok = exp_data
    model = new_model(exp, tok)

    def poison(record):
        if record["epoch"] == 2:
            with torch.no_grad():
                model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match="epoch 3.*last good checkpoint: epoch 2"):
        train(model, data, exp.train, tmp_path, progress=False, on_checkpoint=poison)
    last = latest_checkpoint(tmp_path)
    assert last.name == "epoch-000002"
    weights = load_file(str(last / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize(
    "name,options",
    [
        ("spectral_norm", {"strength": 0.01}),
        ("loss_truncation", {"drop_fraction": 0.1, "buffer_size": 64, "recompute_every": 32}),
        ("example_tied_dropout", {}),
    ],
)
def test_regularizers_train_and_leave_a_plain_model(exp_data, tmp_path, name, options):
    exp, data, tok = exp_data
    cfg = TrainConfig(
        **{**exp.train.__dict__, "epochs": 2, "regularizer": name, "regularizer_options": options}
    )
    plain = train(
        new_model(exp, tok),
        data,
        TrainConfig(**{**cfg.__dict__, "regularizer": None}),
        tmp_path / "p",
        progress=False,
    )
    result = train(new_model(exp, tok), data, cfg, tmp_path / "r", progress=False)
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in result.model.modules())
    assert hooks == 0  # finalize() baked everything into the weights
    assert not torch.equal(
        result.model.transformer.h[0].mlp.c_proj.weight,
        plain.model.transformer.h[0].mlp.c_proj.weight,
    )
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_resume_with_regularizer_state(exp_data, tmp_path):
    exp, data, tok = exp_data
    opts = {"drop_fraction": 0.2, "buffer_size": 40, "recompute_every": 20}
    cfg = TrainConfig(
        **{**exp.train.__dict__, "regularizer": "loss_truncation", "regularizer_options": opts}
    )
    straight = train(new_model(exp, tok), data, cfg, tmp_path / "a", progress=False)

    def crash(record):
        if record["epoch"] == 3:
            raise Crash

    with pytest.raises(Crash):
        train(new_model(exp, tok), data, cfg, tmp_path / "b", progress=False, on_checkpoint=crash)
    resumed = train(new_model(exp, tok), data, cfg, tmp_path / "b", progress=False)
    for (k, a), b in zip(
        _weights(straight.model).items(), _weights(resumed.model).values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_run_directory_layout_and_refusals(tmp_path):
    exp = make_experiment("cpu-mini", "increment", "noise", [*SMALL, "train.epochs=2"])
    out = tmp_path / "run"
    run = train_experiment(exp, out, progress=False)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "experiment.json",
        "history.json",
        "run.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / ".final").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"] == exp.to_dict()
    assert meta["metrics"]["n_candidates"] == run.final["n_candidates"] > 0
    model, tok = load_model(out)
    assert len(tok) == 14 and model.config.n_layer == 2
    with pytest.raises(FileExistsError, match="finished run"):
        train_experiment(exp, out, progress=False)
    other = make_experiment("cpu-mini", "increment", "noise", [*SMALL, "train.epochs=3"])
    (out / "run.json").unlink()
    with pytest.raises(FileExistsError, match="different experiment"):
        train_experiment(other, out, progress=False)
    again = train_experiment(other, out, overwrite=True, progress=False)
    assert [r["epoch"] for r in again.history] == [1, 2, 3]


def test_interrupted_run_resumes_through_train_experiment(tmp_path):
    exp = make_experiment("cpu-mini", "increment", "noise", [*SMALL, "train.epochs=3"])

    def crash(record):
        if record["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train_experiment(exp, tmp_path / "r", progress=False, on_checkpoint=crash)
    assert not (tmp_path / "r" / "model.safetensors").exists()  # no final model yet
    run = train_experiment(exp, tmp_path / "r", progress=False)
    assert [r["epoch"] for r in run.history] == [1, 2, 3]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["resumed_from_epoch"] == 2


def test_gpt_neox_trains_and_measures(tmp_path):
    """Pythia's architecture goes through the same loop, metric and run directory."""
    exp = make_experiment(
        "cpu-mini", "increment", "noise", [*SMALL, "train.epochs=2", "model.arch=gpt_neox"]
    )
    run = train_experiment(exp, tmp_path / "neox", progress=False)
    model, _ = load_model(tmp_path / "neox")
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert run.final["n_candidates"] > 0 and 0.0 <= run.final["accuracy"] <= 1.0
