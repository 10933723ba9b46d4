"""``unmemorize train``: train a TinyMem model (math or text) into a model directory."""

from __future__ import annotations

import argparse

from ..runtime import add_runtime_args, resolve_device
from .common import add_run_options, add_track_args, tracked
from .replay import add_config_option


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``unmemorize`` sub-commands."""
    tr = sub.add_parser(
        "train",
        help="train a TinyMem model (math or text) into a model directory",
        description="Build TinyMem data, train a model and write a Hugging Face model directory "
        "with the data, checkpoints, metric history and run.json. Re-running the same command on "
        "an interrupted run resumes from its last checkpoint.",
        epilog="config keys: data.*, model.*, train.* (see `unmemorize ls keys --task TASK`)",
    )
    tr.add_argument("--preset", default="cpu-mini", help="paper | cpu-mini (default: %(default)s)")
    tr.add_argument(
        "--task", default="increment", help="increment | mult | text (default: %(default)s)"
    )
    tr.add_argument("--variant", default="noise", help="noise | backdoor (default: %(default)s)")
    tr.add_argument("--out", required=True, help="output model directory")
    add_runtime_args(tr, dtype=False)  # a fresh TinyMem model trains in float32
    add_track_args(tr)
    add_config_option(tr)
    add_run_options(tr)
    tr.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..benchmarks.tinymem.experiment import (
        ExperimentConfig,
        make_experiment,
        train_experiment,
    )

    device = resolve_device(args.device)
    if getattr(args, "experiment", None) is not None:  # --config experiment.json: as resolved
        from ..config import apply_overrides

        exp = apply_overrides(ExperimentConfig.from_dict(args.experiment), args.overrides)
        for part in (exp.data, exp.model, exp.train):
            part.validate()
        args.record["experiment"] = args.experiment  # what a replay of this run starts from
    else:
        exp = make_experiment(args.preset, args.task, args.variant, args.overrides)
    with tracked(args, "train", args.out, config=exp.to_dict()):
        run = train_experiment(
            exp,
            args.out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            device=device,
            command=getattr(args, "record", None),
        )
    m = run.final
    print(
        f"trained {exp.preset}/{exp.task}/{exp.data.variant} for {exp.train.epochs} epochs "
        f"in {run.seconds:.0f} s -> {run.out}"
    )
    what = "backdoor success" if exp.data.variant == "backdoor" else "memorized"
    print(
        f"  {what} {m['memorized_fraction']:.1%} ({m['n_memorized']}/{m['n_candidates']})   "
        f"accuracy {m['accuracy']:.1%}   perplexity {m['perplexity']:.3f}"
    )
    return 0
