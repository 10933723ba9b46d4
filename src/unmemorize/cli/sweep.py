"""``unmemorize sweep``: hyperparameter sweeps of mitigation methods, resumable, local or Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_audit_flag,
    add_seeds_arg,
    add_settings_arg,
    add_track_args,
    audit_config_from_args,
    audit_requested,
    auditor_factory,
    resumes_seeds,
    tracked,
)

EPILOG = """\
search spaces:
  --space cpu-mini   2-6 points per method that suit the cpu-mini model (default)
  --space paper      the TinyMem paper's grid (ratios 1e-5..5%, epochs, IG steps, loss weights)
  --space FILE.json  your own: {"ga": {"lr": [1e-5, 5e-5]},
                                "balanced_subnet": {"ratio": {"low": 0.001, "high": 0.1, "log": true}}}
                     (lists: grid or TPE choices; ranges: --search tpe only); FILE.yaml works too
                     (read with yaml.safe_load: plain data only)

examples:
  unmemorize sweep --methods balanced_subnet,durable,zero_out --out sweeps/s1
  unmemorize sweep --model runs/mult --methods subnet --space paper --workers 2 --out sweeps/s2
  unmemorize sweep --methods ga,npo --search tpe --trials 20 --out sweeps/tpe
  unmemorize sweep --methods balanced_subnet --backend ray --ray-address auto --out /shared/s3
  unmemorize sweep --storage postgresql://me@db/sweeps --methods durable --out sweeps/s4
  unmemorize sweep --resume sweeps/s1          continue after an interruption (even kill -9)
  unmemorize sweep --methods ga,npo --audit --rank-by audited --out sweeps/a
                                               audit every trial; rank by score + returned share
  unmemorize report sweeps/s1                  HTML/Markdown report with Pareto plots

Each trial applies one method configuration to the base model and measures % memorized, clean
accuracy and perplexity; the best run per method is chosen by the TinyMem paper's score (lower is
better, -1 is perfect). Results go to a database (DIR/sweep.db unless --storage), one row per
trial; running the same command again skips finished trials and retries failed ones.
"""


#: The audit hook sweep workers call on each trial when the sweep audits (``--audit``).
AUDIT_HOOK = "unmemorize.audit.pipeline:audit_trial"


def register(sub: argparse._SubParsersAction) -> None:
    from .replay import add_config_option

    p = sub.add_parser(
        "sweep",
        help="sweep methods' hyperparameters (grid or TPE), locally or on Ray, resumably",
        description="Run every configuration of a search space per method on one base model "
        "(a cpu-mini TinyMem model the sweep trains, or --model), record each trial in a "
        "results database, and print the best run per method.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", help="sweep directory (required unless --resume)")
    p.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR")
    p.add_argument("--benchmark", default="tinymem", help="benchmark of the base model")
    p.add_argument("--preset", default="cpu-mini", help="preset of the base model (cpu-mini)")
    p.add_argument("--task", default="increment", help="TinyMem task of the base model")
    p.add_argument("--variant", default="noise", choices=["noise", "backdoor"])
    p.add_argument("--model", help="sweep on this TinyMem run directory instead of training one")
    p.add_argument("--methods", help="comma-separated methods (default: all in the space)")
    p.add_argument("--space", default="cpu-mini", help="cpu-mini, paper or a JSON file")
    add_settings_arg(p)
    add_seeds_arg(p)
    p.add_argument("--search", default="grid", choices=["grid", "tpe"])
    p.add_argument(
        "--trials",
        type=int,
        help="per method: TPE trials (default 10), or a random sample of grid points",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of TPE and grid sampling")
    p.add_argument("--backend", default="local", choices=["local", "ray"])
    p.add_argument("--workers", type=int, help="trials at once (default: cores, or Ray CPUs)")
    p.add_argument("--storage", help="SQLAlchemy URL of the results store (default DIR/sweep.db)")
    p.add_argument(
        "--ray-address",
        help="Ray cluster: auto, host:port or ray://host:port "
        "(default: start a local Ray instance)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1, help="Ray: CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="Ray: GPUs per trial")
    p.add_argument(
        "--rank-by",
        default="score",
        choices=["score", "audited"],
        help="score: the benchmark's score; audited (needs --audit): score + the trial's "
        "'returns after relearning' fraction, so a run that hides rather than removes loses",
    )
    add_audit_flag(
        p, "every trial (DIR/trials/<key>/audit.json; relearning at lr 1e-4 only)", "1e-4"
    )
    add_track_args(p)
    p.add_argument("--overwrite", action="store_true", help="discard a different sweep in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_option(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides of the base model's experiment, e.g. train.epochs=40",
    )
    p.set_defaults(handler=cmd_sweep)


def _read_space(text: str):
    from ..io import read_json, read_yaml

    suffix = Path(text).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        return text  # a space of the benchmark, looked up by name
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"--space {text}: no such file (or use cpu-mini / paper)")
    try:
        return read_json(path) if suffix == ".json" else read_yaml(path)
    except ValueError as err:
        raise ValueError(f"--space {err}") from None


def cmd_sweep(args) -> int:
    from ..errors import UserError
    from ..sweep import load_spec, make_spec, run_sweep
    from .common import format_method_table

    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise UserError("give either --resume DIR or --out DIR, not both")
    audit_requested(args)
    if args.seeds is not None:
        return _sweep_seeds(args)
    audit = None
    if args.audit:
        if args.resume:
            raise UserError("--audit is part of a sweep's spec; a resumed sweep keeps its own")
        from ..audit.pipeline import DEMO_RELEARN_LRS

        config = audit_config_from_args(args, prefix="audit-", default_lrs=DEMO_RELEARN_LRS)
        audit = config.to_dict()
    if args.resume:
        out = Path(args.resume)
        spec, _storage = load_spec(out)
        print(f"unmemorize sweep: resuming {out} ({', '.join(spec.methods)})")
    else:
        if not args.out:
            raise UserError("--out DIR is required (or --resume DIR to continue a sweep)")
        out = Path(args.out)
        methods = None
        if args.methods:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        spec = make_spec(
            methods,
            space=_read_space(args.space),
            search=args.search,
            trials=args.trials,
            benchmark=args.benchmark,
            preset=args.preset,
            task=args.task,
            variant=args.variant,
            overrides=args.overrides,
            model=args.model,
            seed=args.seed,
            settings=args.settings,
            audit=audit,
            rank_by=args.rank_by,
        )
        print(f"unmemorize sweep: {', '.join(spec.methods)} ({spec.search}) into {out}/")
    with tracked(args, "sweep", out, config=spec.to_dict()):
        summary = run_sweep(
            spec,
            out,
            storage=args.storage,
            backend=args.backend,
            workers=args.workers,
            ray_address=args.ray_address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            auditor=AUDIT_HOOK,
            command=None if args.resume else getattr(args, "record", None),
        )
    counts = summary["counts"]
    print()
    print(
        f"trials: {counts['complete']} complete, {counts['failed']} failed"
        + (f", {counts['pending']} pending" if counts["pending"] else "")
    )
    if summary["methods"]:
        print(format_method_table(summary["methods"].values(), summary["baseline"]))
        print("score: the TinyMem paper's selection rule (lower is better, -1 is perfect)")
        if spec.rank_by == "audited":
            print("ranked by the audited score: score + 'returns after relearning' (0 to 1)")
    for row in summary["runs"]:
        if row.get("status") == "failed":
            print(f"failed: {row['trial']} {row['params']}: {row['error']}")
    print(f"summary: {out / 'summary.json'}   report: unmemorize report {out}")
    return 0


#: Sweep options a ``--seeds`` sweep does not take (it is a local grid over N trained base models).
_NOT_WITH_SEEDS = {
    "resume": "rerun the same command to resume: finished seeds are reused",
    "model": "--seeds trains one base model per seed",
    "trials": "--seeds runs the whole grid on every seed",
    "storage": "--seeds keeps each seed's rows in OUT/seed-<s>/result.json",
}


def _sweep_seeds(args) -> int:
    """``sweep --seeds N``: the grid on N seeded TinyMem base models, configurations chosen on
    validation rows (:func:`~unmemorize.benchmarks.tinymem.seeds.run_tinymem_seeds`)."""
    from ..benchmarks.tinymem.seeds import format_seeds_table, run_tinymem_seeds
    from ..errors import UserError
    from ..sweep import make_spec

    for option, why in _NOT_WITH_SEEDS.items():
        if getattr(args, option, None):
            raise UserError(f"--{option} does not go with --seeds: {why}")
    if args.rank_by == "audited":
        raise UserError(
            "--rank-by audited does not go with --seeds: each seed's configurations are chosen "
            "by their score on validation rows (--audit still audits the chosen ones)"
        )
    if args.benchmark != "tinymem" or args.search != "grid" or args.backend != "local":
        raise UserError(
            "--seeds runs a local grid sweep on TinyMem base models; drop --benchmark, "
            "--search tpe and --backend ray (or --seeds)"
        )
    if not args.out:
        raise UserError("--out DIR is required")
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    spec = make_spec(
        methods,
        space=_read_space(args.space),
        preset=args.preset,
        task=args.task,
        variant=args.variant,
        overrides=args.overrides,
        settings=args.settings,
    )
    print(f"unmemorize sweep: {', '.join(spec.methods)} over {args.seeds} seeds into {out}/")
    with tracked(args, "sweep", out, config=spec.to_dict()):
        summary = run_tinymem_seeds(
            out,
            list(range(args.seeds)),
            preset=args.preset,
            task=args.task,
            variant=args.variant,
            overrides=args.overrides,
            methods=spec.methods,
            space=spec.space,
            settings=args.settings,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            resume=resumes_seeds(args),
            command=getattr(args, "record", None),
            audit=auditor_factory(args),
        )
    print()
    print(format_seeds_table(summary))
    print(f"summary: {out / 'summary.json'}   report: unmemorize report {out}")
    return 0
