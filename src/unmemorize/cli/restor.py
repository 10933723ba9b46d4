"""``unmemorize restor`` (the RESTOR benchmark) and ``unmemorize restor stats`` (data set counts).

``restor stats`` is a nested command (:meth:`~unmemorize.cli.common.Parser.add_nested_command`):
``unmemorize restor [options] [key=value ...]`` still runs the benchmark.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..runtime import add_runtime_args, resolve_device, resolve_dtype
from .common import (
    add_run_options,
    add_seeds_arg,
    add_settings_arg,
    add_track_args,
    resumes_seeds,
    tracked,
)
from .replay import add_config_option


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``restor`` and its nested ``restor stats`` to the ``unmemorize`` sub-commands."""
    rs = sub.add_parser(
        "restor",
        help="RESTOR: corrupt a model with wrong facts, unlearn them, measure what comes back",
        description="Restorative unlearning (Rezaei et al., arXiv 2411.00204). Train a small LM "
        "on a synthetic world of fictional people (or load --model with RESTOR-format --facts "
        "and --docs), corrupt it with documents that state wrong facts about target people, "
        "unlearn those documents with each method, and score few-shot QA on the targets' facts "
        "(recovery toward the clean model) and on untargeted facts (collateral damage), plus the "
        "log-probability of correct, corrupted and random answers. Writes OUT/summary.json, "
        "OUT/clean/, OUT/corrupted/ and OUT/data/. `unmemorize restor stats --help` counts the "
        "entities, facts, documents and targets of a data set.",
        epilog="config keys: world.*, model.*, clean.*, corrupt.*, unlearn.*, eval.* "
        "(e.g. corrupt.mode=lora clean.steps=800)",
    )
    rs.add_argument("--preset", default="cpu-mini", help="cpu-mini | micro (default: %(default)s)")
    rs.add_argument(
        "--level",
        type=int,
        help="corruption level k: unrelated facts per wrong one (default: the preset's, 1)",
    )
    rs.add_argument(
        "--methods",
        help="comma-separated unlearning methods (default: ga,grad_diff,kl,npo,simnpo,"
        "task_vector,ssd; 'none' stops after corruption)",
    )
    rs.add_argument(
        "--simplified",
        action="store_true",
        help="unlearn the documents' wrong-fact sentences only (RESTOR's localized forget set)",
    )
    rs.add_argument(
        "--out", default="unmemorize-restor", help="output directory (default: %(default)s)"
    )
    rs.add_argument(
        "--model",
        help="start from this local HF model instead of training one (needs --facts and --docs)",
    )
    rs.add_argument("--facts", help="RESTOR facts.json (with --model)")
    rs.add_argument("--entities", help="RESTOR entities.json: the evaluated people (with --model)")
    rs.add_argument(
        "--docs", help='corruption documents, [{"text": ...}] JSON or jsonl (with --model)'
    )
    rs.add_argument(
        "--forget",
        help="with --model: the unlearning forget set (default: --docs; "
        "with --simplified, RESTOR's aligned level-0 file)",
    )
    rs.add_argument(
        "--retain",
        help="with --model: retain documents (default: QA lines about non-target people)",
    )
    rs.add_argument(
        "--column",
        help="with --model: the jsonl key / table column holding the text of --docs, --forget "
        "and --retain (default: text); these may also be .parquet, .arrow or datasets "
        "directories",
    )
    add_runtime_args(rs, what="--model")
    add_track_args(rs)
    add_config_option(rs)
    add_run_options(rs)
    add_settings_arg(rs)
    add_seeds_arg(rs)
    rs.set_defaults(handler=cmd_restor)

    stats = rs.add_nested_command(
        "stats",
        description="Print JSON counts of a RESTOR-format data set: entities, facts, relations, "
        "and per documents file the documents and their target entities (the people the "
        "documents are about; people mentioned in passing do not count).",
    )
    stats.add_argument("--facts", required=True, help="facts.json")
    stats.add_argument("--entities", help="entities.json (restricts the counted entities)")
    stats.add_argument("--docs", nargs="*", default=[], help="documents files")
    stats.set_defaults(handler=cmd_restor_stats)


def cmd_restor(args: argparse.Namespace) -> int:
    from ..benchmarks.restor.pipeline import (
        file_task,
        format_restor_table,
        make_restor_config,
        run_restor,
        run_restor_on_model,
    )
    from ..config import to_dict

    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip() and m != "none"]
    cfg = make_restor_config(
        args.preset,
        args.overrides,
        level=args.level,
        simplified=args.simplified or None,
        settings=args.settings,
    )
    if args.model is None:
        for flag in ("facts", "entities", "docs", "forget", "retain", "column", "dtype"):
            if getattr(args, flag):
                raise UserError(f"--{flag} needs --model (the synthetic world brings its own data)")
        if args.seeds is not None:
            return _restor_seeds(args, cfg, methods)
        print(f"unmemorize restor: {cfg.preset} world, level {cfg.unlearn.level} -> {args.out}/")
        with tracked(args, "restor", args.out, config=to_dict(cfg)):
            summary = run_restor(
                args.out,
                cfg,
                methods=methods,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                settings=args.settings,
                command=getattr(args, "record", None),
            )
    else:
        if args.seeds is not None:
            raise UserError(
                "--seeds varies the synthetic world and its models; with --model the data and "
                "the clean model are given: drop --seeds"
            )
        if not args.facts or not args.docs:
            raise UserError("--model needs --facts FILE and --docs FILE (RESTOR format)")
        task = file_task(
            args.facts,
            args.docs,
            entities=args.entities,
            retain=args.retain,
            forget=args.forget,
            simplified=args.simplified,
            column=args.column,
        )
        with tracked(args, "restor", args.out, config=to_dict(cfg)):
            summary = run_restor_on_model(
                args.model,
                task,
                args.out,
                cfg,
                methods=methods,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                dtype=resolve_dtype(args.dtype),
                device=resolve_device(args.device),
                settings=args.settings,
                command=getattr(args, "record", None),
            )
    print()
    print(format_restor_table(summary))
    print(
        "target/untgt: QA accuracy on the targets' test facts / untargeted facts; wrong: share "
        "of target answers that are the corrupted answer;\nrecov: (acc - corrupted) / (clean - "
        "corrupted); lp_*: mean per-token log-prob of the correct / corrupted / random answers"
    )
    print(f"time {summary['seconds']:.0f} s   summary: {Path(args.out) / 'summary.json'}")
    return 0


def _restor_seeds(args: argparse.Namespace, cfg, methods) -> int:
    from ..benchmarks.restor.seeds import format_restor_seeds_table, run_restor_seeds
    from ..config import to_dict

    print(
        f"unmemorize restor: {args.seeds} seeds of the {cfg.preset} world, level "
        f"{cfg.unlearn.level} -> {args.out}/seed-<s>/ ..."
    )
    with tracked(args, "restor", args.out, config=to_dict(cfg)):
        summary = run_restor_seeds(
            args.out,
            list(range(args.seeds)),
            cfg,
            methods=methods,
            settings=args.settings,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            resume=resumes_seeds(args),
            command=getattr(args, "record", None),
        )
    print()
    print(format_restor_seeds_table(summary))
    print(f"time {summary['seconds']:.0f} s   summary: {Path(args.out) / 'summary.json'}")
    return 0


def cmd_restor_stats(args: argparse.Namespace) -> int:
    import json

    from ..benchmarks.restor.facts import fact_stats, load_docs, load_entities, load_facts

    facts = load_facts(args.facts)
    entities = load_entities(args.entities) if args.entities else None
    docs = {path: load_docs(path) for path in args.docs}
    print(json.dumps(fact_stats(facts, entities, docs or None), indent=2))
    return 0
