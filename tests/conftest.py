"""Shared fixtures: offline mode, fixed seeds, and one small memorizing TinyMem model per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from unmemorize.benchmarks.tinymem.experiment import make_experiment, train_experiment  # noqa: E402

#: A tiny math experiment: 2 layers, d=32, context 48; memorizes most of its 40 noised rows in ~10 s.
TINY_OVERRIDES = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.context_length=48",
    "data.context_length=48",
    "data.num_main=300",
    "data.num_test=50",
    "data.num_noise=40",
    "data.prefix_len=16",
    "data.suffix_len=16",
    "train.epochs=100",  # a memorization plateau (10 of 13 candidates) on any CPU/thread count
    "train.batch_size=32",
    "train.lr=0.003",
    "train.checkpoint_every=30",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny TinyMem run directory (model + data), shared by the metric and CLI tests."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    exp = make_experiment("cpu-mini", "increment", "noise", TINY_OVERRIDES)
    return train_experiment(exp, out, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is fastest, and on a loaded machine far faster than two.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
