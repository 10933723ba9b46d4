"""--track: loss curves and metrics reach TensorBoard event files and a local MLflow store (offline)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from unmemorize import tracking
from unmemorize.cli import main
from unmemorize.errors import UserError
from unmemorize.training import train_on_batches

from .zoo import make_model

has_tensorboard = importlib.util.find_spec("tensorboard") is not None
has_mlflow = importlib.util.find_spec("mlflow") is not None
needs_tensorboard = pytest.mark.skipif(
    not has_tensorboard, reason='tensorboard missing: pip install "unmemorize[tensorboard]"'
)
needs_mlflow = pytest.mark.skipif(
    not has_mlflow, reason='mlflow missing: pip install "unmemorize[mlflow]"'
)


def read_tensorboard(root) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every event file under ``root``, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(root.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def _train(steps: int = 4) -> list[float]:
    model = make_model("gpt2")
    ids = torch.randint(2, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    return train_on_batches(model, lambda step: ids, steps, lr=1e-3, pad_id=None, desc="clean")


def test_no_active_run_logs_nothing_and_changes_nothing():
    assert not tracking.active()
    tracking.log_scalars({"loss": 1.0}, 0)  # no run: a no-op, no import
    tracking.log_curve("x/loss", [1.0, 2.0])
    with tracking.track(None, run_name="none") as run:
        assert run is None and not tracking.active()


@needs_tensorboard
def test_tracking_does_not_change_training(tmp_path):
    plain = _train()
    with tracking.track("tensorboard", tmp_path, run_name="r"):
        tracked = _train()
    assert tracked == plain


@needs_tensorboard
def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    with tracking.track("tensorboard", tmp_path, run_name="run", config={"a": {"b": 1}}):
        losses = _train(steps=5)
        tracking.log_curve("ga[lr=1e-05]/loss", [0.5, 0.25])
        tracking.log_scalars({"m": {"acc": 0.75, "name": "text", "flag": True}}, 3)
    scalars = read_tensorboard(tmp_path / "run")
    assert [s for s, _ in scalars["clean/loss"]] == list(range(5))
    assert [v for _, v in scalars["clean/loss"]] == pytest.approx(losses, rel=1e-6)
    assert len(scalars["clean/lr"]) == 5
    assert scalars["ga_lr_1e-05_/loss"] == [(0, 0.5), (1, 0.25)]
    assert scalars["m/acc"] == [(3, 0.75)]
    assert "m/name" not in scalars and "m/flag" not in scalars  # numbers only
    assert not tracking.active()  # the run ended with the block


@needs_mlflow
def test_mlflow_local_store_reads_back(tmp_path):
    from mlflow.tracking import MlflowClient

    with tracking.track("mlflow", tmp_path, run_name="run", config={"method": "ga", "lr": 1e-5}):
        losses = _train(steps=3)
        tracking.log_scalars({"after": {"accuracy": 0.5}}, 2)
    client = MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "unmemorize"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run"
    assert run.data.params == {"method": "ga", "lr": "1e-05"}
    history = client.get_metric_history(run.info.run_id, "clean/loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx(losses, rel=1e-6)
    assert run.data.metrics["after/accuracy"] == 0.5


def test_missing_extra_is_one_line_naming_pip(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(UserError, match=r'pip install "unmemorize\[mlflow\]"'):
        tracking.check_tracker("mlflow")
    with pytest.raises(ValueError, match="did you mean 'mlflow'"):
        tracking.check_tracker("mlflw")


def test_cli_missing_extra_fails_before_any_work(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--track", "wandb", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "unmemorize: error: --track wandb needs the wandb package: pip install wandb"
    assert not out.exists()
    code = main(["train", "--out", str(out), "--track-dir", str(tmp_path)])
    assert code == 2 and "--track-dir needs --track" in capsys.readouterr().err


@needs_tensorboard
@pytest.mark.slow
def test_cli_train_then_unlearn_tracked(tiny_run, tmp_path):
    """`train --track` logs epoch losses and checkpoint metrics; `unlearn --track` the method's
    per-step losses and the before/after metrics."""
    from .conftest import TINY_OVERRIDES

    tb = tmp_path / "tb"
    epochs = [o for o in TINY_OVERRIDES if not o.startswith("train.")]
    short = ["train.epochs=4", "train.checkpoint_every=2", "train.batch_size=32"]
    code = main(
        ["train", "--out", str(tmp_path / "m"), "--no-progress", "--track", "tensorboard"]
        + ["--track-dir", str(tb), *epochs, *short]
    )
    assert code == 0
    scalars = read_tensorboard(tb)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["train/memorized_fraction"]] == [2, 4]
    assert {"train/accuracy", "train/perplexity"} <= set(scalars)

    tb2 = tmp_path / "tb2"
    code = main(
        ["unlearn", "--model", str(tiny_run.out), "--method", "ga", "--out", str(tmp_path / "u")]
        + ["--no-progress", "--track", "tensorboard", "--track-dir", str(tb2), "epochs=3"]
    )
    assert code == 0
    scalars = read_tensorboard(tb2)
    curve = scalars["ga/loss"]  # unlearn names the run by its method
    assert len(curve) >= 3 and all(math.isfinite(v) for _, v in curve)
    assert "before/memorized_fraction" in scalars
    assert "ga/memorized_fraction" in scalars


@needs_mlflow
@pytest.mark.slow
def test_cli_unlearn_tracked_to_a_local_mlflow_store(tiny_run, tmp_path):
    """`unlearn --track mlflow --track-dir DIR`: MLflow's own client reads the run back from the
    local store DIR/mlruns (issue 17's acceptance, through the command line)."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlf"
    code = main(
        ["unlearn", "--model", str(tiny_run.out), "--method", "ga", "--out", str(tmp_path / "u")]
        + ["--no-progress", "--track", "mlflow", "--track-dir", str(store), "epochs=3"]
    )
    assert code == 0
    client = MlflowClient((store / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "unmemorize"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name.startswith("unlearn-u-")
    assert run.data.params == {"model": str(tiny_run.out), "method": "ga", "overrides": "epochs=3"}
    curve = client.get_metric_history(run.info.run_id, "ga/loss")
    assert len(curve) >= 3 and all(math.isfinite(m.value) for m in curve)
    assert [m.step for m in curve] == list(range(len(curve)))
    record = json.loads((tmp_path / "u" / "run.json").read_text())
    before = record["before"]["memorized_fraction"]
    assert run.data.metrics["before/memorized_fraction"] == pytest.approx(before)
    assert run.data.metrics["ga/memorized_fraction"] == pytest.approx(
        record["after"]["memorized_fraction"]
    )
    # "accuracy" (the mean) beside "accuracy/increment" (one set): a file store cannot hold both
    # as paths, so MLflow names keep their first "/" only
    (per_set,) = [k for k in record["before"] if k.startswith("accuracy/")]  # accuracy/<set>
    assert run.data.metrics["before/accuracy"] == pytest.approx(record["before"]["accuracy"])
    assert run.data.metrics[f"before/{per_set.replace('/', '.')}"] == pytest.approx(
        record["before"][per_set]
    )
