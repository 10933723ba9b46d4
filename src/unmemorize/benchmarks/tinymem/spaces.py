"""TinyMem's search spaces, as data (the format: :mod:`unmemorize.benchmarks.spaces`).

* ``demo`` -- the demo's hand-picked points on the cpu-mini increment model, one or two per
  method; each method's best run by the TinyMem paper's score is reported.
* ``cpu-mini`` -- 2 to 6 points per method around the settings that work on the cpu-mini
  TinyMem model (the demo's grid, widened), each method well under a minute on 2 cores.
* ``paper`` -- the TinyMem paper's sweep (Sakarvadia et al. 2024, arXiv 2410.02159, launcher
  ``localize_hp_sweep.py``): neuron/weight ratios {1e-5, 1e-4, 1e-3, 1%, 5%} (Subnet and
  BalancedSubnet also 10%, 25%, 50%, 75%, 90%), epochs {1, 10, 30} for Slimming, HardConcrete
  and the subnet methods, IG always 20 steps (the original ignored its ig_steps argument),
  BalancedSubnet loss weighting {0.05, 0.5, 0.7}. Run it with ``--settings paper`` for the
  original optimizers too.
* ``paper-demo`` -- the demo's points under ``--settings paper``: a few points of ``paper``. The fine-tuning recipes keep the paper's single setting. RESTOR's
  own grid was not published; its gradient methods get a SOUL-style learning-rate x epochs grid.
  The paper ran these hundreds of times on a cluster: use ``--backend ray`` or a subset.

Values are written with their config field's type (``lambda_l1=10.0`` for a float field), so a
point builds exactly the config its ``key=value`` form would.
"""

from __future__ import annotations

from ..spaces import Space

DEMO: Space = {
    "zero_out": [{"ratio": 0.05, "max_rows": 8}, {"ratio": 0.02, "max_rows": 16}],
    "activations": [{"ratio": 0.03}, {"ratio": 0.05}],
    "slimming": [{"ratio": 0.02, "epochs": 3}, {"ratio": 0.05, "epochs": 10, "lambda_l1": 10.0}],
    "hard_concrete": [{"ratio": 0.05, "epochs": 30, "lambda_l1": 10.0}],
    "integrated_gradients": [{"ratio": 0.05, "ig_steps": 4, "max_rows": 8}],
    "greedy": [{"ratio": 0.005, "weights_per_step": 40}, {"ratio": 0.01, "weights_per_step": 40}],
    "durable": [{"ratio": 0.015}, {"ratio": 0.02}],
    "durable_agg": [{"ratio": 0.0075}, {"ratio": 0.01}],
    "second_order": [{"ratio": 0.005}, {"ratio": 0.0075}],
    "subnet": [{}, {"ratio": 0.01, "lr": 10.0}],
    "balanced_subnet": [{}, {"forget_per_batch": 64}],
    "finetune_clean": [{}, {"lr": 1e-4}],
    "finetune_extra": [{}],
    "finetune_both": [{}],
    "ssd": [{"selection_weight": 15.0}, {"selection_weight": 20.0}],
    "ga": [{"lr": 3e-5}, {"lr": 5e-5}],
    "grad_diff": [{"lr": 3e-5}, {"lr": 7e-5}],
    "kl": [{"lr": 5e-5}, {"divergence": "cross_entropy", "lr": 5e-5}],
    "npo": [{"lr": 3e-5}, {"lr": 5e-5}],
    "simnpo": [{"lr": 3e-5}, {"lr": 5e-5}],
    "task_vector": [{"lr": 1e-4, "alpha": 2.0}, {"lr": 2e-4, "alpha": 2.0}],
}

CPU_MINI: Space = {
    "zero_out": {"ratio": [0.02, 0.05], "max_rows": [8]},
    "activations": {"ratio": [0.03, 0.05]},
    "slimming": {"ratio": [0.02, 0.05], "epochs": [3, 10], "lambda_l1": [10.0]},
    "hard_concrete": {"ratio": [0.05], "epochs": [10, 30], "lambda_l1": [10.0]},
    "integrated_gradients": {"ratio": [0.03, 0.05], "ig_steps": [4], "max_rows": [8]},
    "greedy": {"ratio": [0.005, 0.01], "weights_per_step": [40]},
    "durable": {"ratio": [0.01, 0.015, 0.02]},
    "durable_agg": {"ratio": [0.005, 0.0075, 0.01]},
    "second_order": {"ratio": [0.005, 0.0075, 0.01]},
    "subnet": {"ratio": [0.005, 0.01], "lr": [1.0, 10.0]},
    "balanced_subnet": {"ratio": [0.01, 0.05], "retain_weight": [0.7, 0.8]},
    "finetune_clean": {"lr": [1e-4, 1e-3]},
    "finetune_extra": {"lr": [1e-3]},
    "finetune_both": {"lr": [1e-3]},
    "ssd": {"selection_weight": [10.0, 15.0, 20.0]},
    "ga": {"lr": [3e-5, 5e-5]},
    "grad_diff": {"lr": [3e-5, 7e-5]},
    "kl": {"lr": [5e-5], "divergence": ["kl", "cross_entropy"]},
    "npo": {"lr": [3e-5, 5e-5]},
    "simnpo": {"lr": [3e-5, 5e-5]},
    "task_vector": {"lr": [1e-4, 2e-4], "alpha": [2.0]},
}

_PAPER_RATIOS = [1e-5, 1e-4, 1e-3, 0.01, 0.05]
#: Subnet and BalancedSubnet also ran the large ratios (``localize_hp_sweep.py``).
_PAPER_SUBNET_RATIOS = [*_PAPER_RATIOS, 0.1, 0.25, 0.5, 0.75, 0.9]
_PAPER_EPOCHS = [1, 10, 30]
_GRADIENT_LRS = [1e-5, 2e-5, 5e-5, 1e-4]

PAPER: Space = {
    "zero_out": {"ratio": _PAPER_RATIOS},
    "activations": {"ratio": _PAPER_RATIOS},
    "slimming": {"ratio": _PAPER_RATIOS, "epochs": _PAPER_EPOCHS},
    "hard_concrete": {"ratio": _PAPER_RATIOS, "epochs": _PAPER_EPOCHS},
    # the original ignored its ig_steps argument: every run used 20 steps
    "integrated_gradients": {"ratio": _PAPER_RATIOS, "ig_steps": [20]},
    "greedy": {"ratio": _PAPER_RATIOS},
    "durable": {"ratio": _PAPER_RATIOS},
    "durable_agg": {"ratio": _PAPER_RATIOS},
    "second_order": {"ratio": _PAPER_RATIOS},
    "subnet": {"ratio": _PAPER_SUBNET_RATIOS, "epochs": _PAPER_EPOCHS},
    "balanced_subnet": {
        "ratio": _PAPER_SUBNET_RATIOS,
        "epochs": _PAPER_EPOCHS,
        "retain_weight": [0.05, 0.5, 0.7],
    },
    "finetune_clean": {"lr": [1e-3], "epochs": [5]},
    "finetune_extra": {"lr": [1e-3], "epochs": [5]},
    "finetune_both": {"lr": [1e-3], "epochs": [5]},
    "ssd": {"selection_weight": [1, 5, 10, 50], "dampening_constant": [1.0]},
    "ga": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
    "grad_diff": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
    "kl": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
    "npo": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
    "simnpo": {"lr": _GRADIENT_LRS, "epochs": [1, 5]},
    "task_vector": {"lr": _GRADIENT_LRS, "alpha": [1.0, 2.0]},
}

#: The demo under ``--settings paper``: points of the original grid (``PAPER``), one to four per
#: method, small enough for the demo's CPU budget. Kept from the demo for time only: the row caps
#: of zero_out/integrated_gradients (``max_rows``) and Greedy's ``weights_per_step``. Methods the
#: TinyMem paper did not run keep their demo points.
PAPER_DEMO: Space = {
    "zero_out": {"ratio": [0.05], "max_rows": [8]},
    "activations": {"ratio": [0.01, 0.05]},
    "slimming": {"ratio": [0.05], "epochs": [10, 30]},
    "hard_concrete": {"ratio": [0.05], "epochs": [30]},
    "integrated_gradients": {"ratio": [0.05], "ig_steps": [20], "max_rows": [8]},
    "greedy": {"ratio": [1e-3], "weights_per_step": [40]},
    "durable": {"ratio": [0.01, 0.05]},
    "durable_agg": {"ratio": [1e-3, 0.01]},
    "second_order": {"ratio": [1e-3, 0.01]},
    "subnet": {"ratio": [0.01, 0.05], "epochs": [30]},
    "balanced_subnet": {"ratio": [0.05, 0.25], "epochs": [1, 10], "retain_weight": [0.7]},
    "finetune_clean": [{}],
    "finetune_extra": [{}],
    "finetune_both": [{}],
    **{
        name: DEMO[name]
        for name in ("ssd", "ga", "grad_diff", "kl", "npo", "simnpo", "task_vector")
    },
}

SPACES: dict[str, Space] = {
    "demo": DEMO,
    "cpu-mini": CPU_MINI,
    "paper": PAPER,
    "paper-demo": PAPER_DEMO,
}

__all__ = ["CPU_MINI", "DEMO", "PAPER", "PAPER_DEMO", "SPACES"]
