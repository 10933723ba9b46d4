"""TinyMem's settings as data: ``default`` (this project's) and ``paper`` (the original code's).

``paper`` is the configuration of the original TinyMem code (Sakarvadia et al. 2024, arXiv
2410.02159; msakarvadia/memorization: ``localizing_memorization.py``, ``localize_hp_sweep.py``,
``random_subnet*.py``, ``hard_concrete.py``, ``durable.py``, ``greedy.py``, ``ft_toy_model.py``):

* methods: BalancedSubnet and Subnet with SGD lr 0.1 constant, momentum 0.9, weight decay 5e-4,
  batch 64 (BalancedSubnet's loss weighting w = 0.7, the paper's best); IG always 20 steps;
  HardConcrete's early stop checked every 10 epochs; Durable-Aggregate ranking |grad| over all
  parameters; Greedy counting ratio x all parameters;
* spaces: the original sweep grid (``paper``; ``paper-demo`` for the demo, a few of its points);
* switches: pad-included accuracy (``legacy_accuracy``, the original ``neuron_utils.py``), the
  original retain set (every training row, noised / poisoned ones included, ``retain="all"``), and
  the original fine-tuning recipe (the clean twins of ALL noised training rows,
  ``noise_twins="all"``, continuing from the training run's optimizer state,
  ``finetune_optimizer="resumed"``).

Which original bugs ``paper`` does not reproduce is :data:`NOT_REPRODUCED` (also in the README).
"""

from __future__ import annotations

from ..settings import DEFAULT, Settings

#: Original-code bugs that ``--settings paper`` does not reproduce (see the fidelity audit).
NOT_REPRODUCED = (
    "retain rows equal to a forget row are still dropped (the original retain set held the "
    "memorized noise rows themselves, which trains them back in)",
    "Zero-Out ablates the probed neuron (the original's one-hot mask kept only that neuron)",
    "neuron edits match layers exactly (the original's `str(ly) in name` hit layers 10-15 too)",
    "HardConcrete's early stop ends training (the original only left the inner loop) and its "
    "gradients are zeroed every step (the original accumulated them over an epoch)",
    "Second-Order zeroes gradients between Fisher samples (the original accumulated them)",
    "a batch without forget or retain rows gives no NaN (the original's BalancedSubnet had no "
    "guard)",
    "example-tied dropout drops MLP units (the original masked token positions and its mask "
    "table stayed zero after the first batch)",
)

PAPER = Settings(
    name="paper",
    summary="the original TinyMem code's hyperparameters, grid, retain set, accuracy and "
    "fine-tuning recipe",
    methods={
        "balanced_subnet": {
            "lr": 0.1,
            "lr_schedule": "constant",
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "batch_size": 64,
            "forget_per_batch": 0,
            "retain_weight": 0.7,
        },
        "subnet": {
            "lr": 0.1,
            "lr_schedule": "constant",
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "batch_size": 64,
        },
        "integrated_gradients": {"ig_steps": 20},
        "hard_concrete": {"check_epochs": 10, "batch_size": 64},
        "durable_agg": {"rank_over": "all"},
        "greedy": {"count_over": "all"},
    },
    spaces={"demo": "paper-demo", "cpu-mini": "paper", "paper": "paper"},
    switches={
        "legacy_accuracy": True,
        "retain": "all",
        "noise_twins": "all",
        "finetune_optimizer": "resumed",
    },
    not_reproduced=NOT_REPRODUCED,
)

SETTINGS: dict[str, Settings] = {"default": DEFAULT, "paper": PAPER}

__all__ = ["NOT_REPRODUCED", "PAPER", "SETTINGS"]
