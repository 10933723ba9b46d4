"""The ``unmemorize`` command line: thin over the library (parse, call, print).

User mistakes (missing files, bad options, unknown names, ...) end in one line on stderr,
``unmemorize: error: <what is wrong and how to fix it>``, exit status 2, and no traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..runtime import (
    DEVICE_MAPS,
    add_runtime_args,
    add_window_args,
    check_window,
    resolve_device,
    resolve_dtype,
    resolve_window,
)

EXAMPLES = """\
examples:
  unmemorize demo                                   train a cpu-mini model and measure memorization
  unmemorize train --preset cpu-mini --task mult --out runs/mult
  unmemorize train --preset cpu-mini --out runs/r train.epochs=120 train.regularizer=spectral_norm
  unmemorize measure --model runs/mult              memorized candidates of a TinyMem run
  unmemorize measure --model DIR --sequences seqs.jsonl --prefix-len 32 --suffix-len 32 --json out.json
  unmemorize unlearn --model unmemorize-demo/model --method balanced_subnet --out runs/bs
  unmemorize ls methods                             every method, its paper and its options
  unmemorize restor --out runs/restor               corrupt, unlearn, measure what comes back
  unmemorize restor stats --facts facts.json --entities entities.json --docs mix_a0.json
"""


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage mistakes reported like every other error: one line, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"unmemorize: error: {message} (see `{self.prog} --help`)\n")


#: OS errors that are the machine's state, not a bug: printed as one line saying what to do.
_DISK_ERRORS = {
    errno.ENOSPC: "disk full (no space left on device) writing {}; free some space or choose "
    "an output on another disk",
    errno.EDQUOT: "disk quota exceeded writing {}; free some space or choose an output on "
    "another disk",
    errno.EROFS: "read-only file system: cannot write {}; choose an output on a writable disk",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..methods.base import MethodDivergedError
    from ..models import ModelDirError
    from ..training import TrainingDivergedError

    return (
        UserError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ModelDirError,
        TrainingDivergedError,
        MethodDivergedError,
        MemoryError,  # runtime.check_memory_fits: says what the model needs and what to try
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unmemorize",
        description="Find what a language model memorized, remove it, and prove the removal worked.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"unmemorize {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train a cpu-mini TinyMem model, then remove its memorization with every method",
        description="The main job on the built-in benchmark: build cpu-mini arithmetic data with "
        "100 noised sequences, train a 4-layer GPT-2 until it memorizes them, measure the "
        "memorized fraction, accuracy and perplexity, then apply every mitigation method (a small "
        "grid each) and print a table ranked by the TinyMem paper's score. Writes "
        "OUT/summary.json and OUT/model/ (about 6 minutes on 2 CPU cores).",
    )
    demo.add_argument(
        "--out", default="unmemorize-demo", help="output directory (default: %(default)s)"
    )
    demo.add_argument(
        "--methods",
        help="comma-separated methods to run after training (default: all; 'none' skips them)",
    )
    # TinyMem trains a fresh model in float32 (its results are float32 results): --device only
    add_runtime_args(demo, dtype=False)
    _add_run_options(demo)

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
    _add_run_options(tr)

    me = sub.add_parser(
        "measure",
        help="measure which sequences a model reproduces verbatim",
        description="A sequence is memorized when greedy decoding from its first P tokens "
        "reproduces the next K tokens exactly (computed in one teacher-forced pass). Without "
        "--sequences, a model trained by `unmemorize train` is measured on its own memorization "
        "candidates (noised sequences whose noise falls inside the scored window).",
    )
    me.add_argument("--model", required=True, help="local Hugging Face model directory")
    me.add_argument(
        "--sequences",
        help='jsonl: {"input_ids": [...]}, {"text": ...} or '
        '{"prefix_ids": [...], "target_ids": [...]} per line',
    )
    add_window_args(me, "the run's, or 32")
    me.add_argument("--json", help="write the report (with per-sequence verdicts) to this file")
    me.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="sequences per forward pass (halved automatically on out-of-memory)",
    )
    add_runtime_args(me)
    me.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="shard one model's layers over every GPU, then the CPU (accelerate; for a model "
        "larger than one GPU; replaces --device)",
    )
    me.add_argument(
        "--generate",
        action="store_true",
        help="also run real greedy generation: checks the verdicts and adds the "
        "token-level score (fraction of the K tokens reproduced)",
    )

    un = sub.add_parser(
        "unlearn",
        help="remove memorized sequences from a model with a mitigation method",
        description="Apply an unlearning / fine-tuning / dampening method to a model and write "
        "the edited model to --out with run.json (config, metrics before and after, score, "
        "seconds). The input model is never modified. For a model trained by `unmemorize "
        "train`, the memorized sequences are found automatically; otherwise pass --forget "
        "(sequences to forget; only those the model currently reproduces are used) and --retain "
        "(clean sequences whose behaviour must be kept).",
        epilog="methods and their options: `unmemorize ls methods`\n"
        "example: unmemorize unlearn --model runs/demo --method balanced_subnet --out runs/bs "
        "ratio=0.1 epochs=40",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    un.add_argument("--model", required=True, help="local Hugging Face model directory")
    un.add_argument("--method", required=True, help="method name (`unmemorize ls methods`)")
    un.add_argument("--out", required=True, help="output directory for the edited model")
    un.add_argument("--forget", help="jsonl of sequences to forget (same format as measure)")
    un.add_argument("--retain", help="jsonl of clean sequences to keep (retain set)")
    un.add_argument(
        "--eval",
        dest="eval_file",
        help="jsonl of held-out sequences for accuracy/perplexity (default: the retain set)",
    )
    add_window_args(un, "32; for --forget files")
    un.add_argument("--batch-size", type=int, default=512, help="sequences per metric pass")
    add_runtime_args(un)
    un.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    un.add_argument("--no-progress", action="store_true", help="hide progress bars")
    un.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="method options, e.g. ratio=0.05 epochs=20 (`unmemorize ls methods`)",
    )

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
    add_runtime_args(rs, what="--model")
    _add_run_options(rs)

    ls = sub.add_parser("ls", help="list methods, presets, tasks, regularizers or config keys")
    ls.add_argument("what", choices=["methods", "presets", "tasks", "regularizers", "keys"])
    ls.add_argument("--task", default="increment", help="task whose config keys to list")

    from .plugins import register_all

    register_all(sub)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that train: --overwrite, --no-progress, overrides."""
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.epochs=60 model.n_layers=2 (`unmemorize ls keys`)",
    )


def build_restor_stats_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unmemorize restor stats",
        description="Print JSON counts of a RESTOR-format data set: entities, facts, relations, "
        "and per documents file the documents and their target entities (the people the "
        "documents are about; people mentioned in passing do not count).",
    )
    parser.add_argument("--facts", required=True, help="facts.json")
    parser.add_argument("--entities", help="entities.json (restricts the counted entities)")
    parser.add_argument("--docs", nargs="*", default=[], help="documents files")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["restor", "stats"]:
        try:
            args = build_restor_stats_parser().parse_args(argv[2:])
        except SystemExit as done:  # --help, or a usage error already printed as one line
            return done.code if isinstance(done.code, int) else 2
        args.command, args.verbose = "restor-stats", False
    else:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:
            return done.code if isinstance(done.code, int) else 2
        if args.command is None:
            parser.print_help()
            return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    try:
        handler = (
            getattr(args, "handler", None)
            or {
                "demo": cmd_demo,
                "train": cmd_train,
                "measure": cmd_measure,
                "unlearn": cmd_unlearn,
                "restor": cmd_restor,
                "restor-stats": cmd_restor_stats,
                "ls": cmd_ls,
            }[args.command]
        )
        return handler(args) or 0
    except BrokenPipeError:  # e.g. `unmemorize ls keys | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("unmemorize: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if (
            isinstance(err, (FileNotFoundError, PermissionError))
            and err.filename
            and str(err.filename) not in message
        ):
            message = f"{message}: {err.filename}"
        print(f"unmemorize: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        print(f"unmemorize: error: {_DISK_ERRORS[err.errno].format(err.filename)}", file=sys.stderr)
        return 2


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_demo(args) -> int:
    from ..benchmarks.tinymem.experiment import run_demo

    device = resolve_device(args.device)
    methods = None
    if args.methods is not None:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m != "none")
    print(f"unmemorize demo: training a cpu-mini TinyMem model into {args.out}/ ...")
    summary = run_demo(
        args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        overrides=tuple(args.overrides),
        methods=methods,
        device=device,
    )
    b = summary["baseline"]
    print()
    print("TinyMem cpu-mini: 4-layer GPT-2 trained on 1,100 '+7' sequences, 100 of them noised")
    print(
        f"  memorized        {b['memorized_fraction']:7.1%}  ({b['n_memorized']} of "
        f"{b['n_candidates']} noised sequences reproduced verbatim from their clean prefix)"
    )
    print(f"  test accuracy    {b['accuracy']:7.1%}  (teacher-forced next token, padding excluded)")
    print(f"  test perplexity  {b['perplexity']:7.3f}")
    if summary["methods"]:
        print()
        print(format_method_table(summary["methods"].values(), b))
        print("score: relative change in % memorized minus mean relative change in accuracy")
        print("(the TinyMem paper's selection rule; lower is better, -1 is perfect)")
    elif "methods_skipped" in summary:
        print(f"  no unlearning: {summary['methods_skipped']}")
    print(f"  time             {summary['seconds']:6.0f} s")
    print(f"summary: {Path(args.out) / 'summary.json'}   model: {summary['model_dir']}")
    return 0


def format_method_table(rows, baseline: dict) -> str:
    """The demo's table: one line per method run, in the order given (best first)."""
    header = (
        f"{'method':<22}{'memorized':>10}{'left':>8}{'accuracy':>10}{'perplexity':>11}"
        f"{'seconds':>9}{'score':>8}  config"
    )
    lines = [header, "-" * len(header)]
    lines.append(
        f"{'(before)':<22}{baseline['memorized_fraction']:>10.1%}{baseline['n_memorized']:>8}"
        f"{baseline['accuracy']:>10.1%}{baseline['perplexity']:>11.3f}"
    )
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<22}  diverged: {r['error']}")
            continue
        lines.append(
            f"{r['method']:<22}{r['memorized_fraction']:>10.1%}{r['n_still_memorized']:>8}"
            f"{r['accuracy']:>10.1%}{r['perplexity']:>11.3f}{r['seconds']:>9.1f}"
            f"{r['score']:>8.3f}  {' '.join(r['overrides'])}"
        )
    return "\n".join(lines)


def cmd_train(args) -> int:
    from ..benchmarks.tinymem.experiment import make_experiment, train_experiment

    device = resolve_device(args.device)
    exp = make_experiment(args.preset, args.task, args.variant, args.overrides)
    run = train_experiment(
        exp, args.out, overwrite=args.overwrite, progress=not args.no_progress, device=device
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


def cmd_measure(args) -> int:
    import torch

    from ..benchmarks.tinymem.experiment import load_run
    from ..data.sequences import iter_sequences
    from ..distributed import is_main_process, launched_processes, run_sharded
    from ..io import atomic_write_json
    from ..metrics import MemorizationReport, generate_memorized, memorized_sharded

    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    args.prefix_len, args.suffix_len = resolve_window(args.window, args.prefix_len, args.suffix_len)
    if args.device_map is not None and launched_processes() > 1:
        raise UserError(
            "--device-map spreads one model over every GPU; under a multi-process launch each "
            "process loads its own copy: use one or the other"
        )
    if args.json:
        from ..io import check_output_file

        check_output_file(args.json, "--json")  # before the work, not after it
    model, tokenizer, data = load_run(
        args.model,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
        device_map=args.device_map,
    )
    vocab = model.get_input_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    if args.sequences is None:
        if data is None:
            raise UserError(
                f"{args.model} was not trained by `unmemorize train`; pass --sequences FILE"
            )
        mem = data.memorization
        if args.prefix_len is not None or args.suffix_len is not None:
            raise UserError(
                "--prefix-len/--suffix-len/--window apply to --sequences; a run uses its own window"
            )
        k = mem.suffix_len
        chunks = [(mem.prompt_ids, mem.target_ids, mem.prefix_len)]
    else:
        # default window: the run's own (a TinyMem run), else Pythia-style 32 -> 32
        run_p = (
            int(data.memorization.prefix_len[0])
            if data is not None and len(data.memorization)
            else 32
        )
        run_k = data.memorization.suffix_len if data is not None else 32
        p = args.prefix_len if args.prefix_len is not None else run_p
        k = args.suffix_len if args.suffix_len is not None else run_k
        check_window(model, p, k)
        # streamed: memory stays bounded by one chunk of rows whatever the file's length
        chunks = ((ids, ids, p) for ids in iter_sequences(args.sequences, tokenizer, vocab, p, k))
    parts, gen_parts, gen_seconds = [], [], 0.0
    # under `accelerate launch` each process judges every N-th row; verdicts merge in order
    for prompt, target, prefix in chunks:
        parts.append(
            memorized_sharded(model, prompt, target, prefix, k, batch_size=args.batch_size)
        )
        if args.generate:
            t_gen = time.perf_counter()
            prefix = torch.as_tensor(prefix).expand(len(target))

            def generate(rows, prompt=prompt, target=target, prefix=prefix):
                return generate_memorized(
                    model, prompt[rows], target[rows], prefix[rows], k, batch_size=args.batch_size
                )

            gen_parts.append(run_sharded(generate, len(target), args.device))
            gen_seconds += time.perf_counter() - t_gen
    verdict = torch.cat(parts)
    if args.sequences is None:
        candidate, group = mem.window_differs(), mem.group
        source = f"{len(mem)} memorization candidates of the run"
    else:
        candidate = torch.ones(len(verdict), dtype=torch.bool)
        group = torch.zeros(len(verdict), dtype=torch.long)
        source = f"{len(verdict)} sequences from {args.sequences}"
    seconds = time.perf_counter() - t0 - gen_seconds
    report = MemorizationReport(verdict, candidate, group)
    result = report.to_dict()
    result.update(
        {
            "model": str(args.model),
            "prefix_len": p if args.sequences else None,
            "suffix_len": k,
            "seconds": seconds,
        }
    )
    # per-sequence rows grow with the sequences: built only when written (--json)
    per_seq = (
        [
            {"index": i, "memorized": bool(v), "candidate": bool(c)}
            for i, (v, c) in enumerate(zip(verdict.tolist(), candidate.tolist(), strict=True))
        ]
        if args.json
        else []
    )
    if args.generate:
        gen_verdict = torch.cat([v for v, _ in gen_parts])
        score = torch.cat([s for _, s in gen_parts])
        agree = bool((gen_verdict == verdict).all())
        result["generate_agrees"] = agree
        result["mean_token_score"] = (
            float(score[candidate].mean()) if bool(candidate.any()) else 0.0
        )
        for row, s in zip(per_seq, score.tolist() if args.json else [], strict=True):
            row["token_score"] = s
    result["sequences"] = per_seq
    if not is_main_process():
        return 0  # rank 0 prints and writes

    print(f"measured {source} in {seconds:.2f} s")
    print(f"  {'sequences counted':<22}{result['n_candidates']:>8}")
    print(f"  {'memorized':<22}{result['n_memorized']:>8}")
    print(f"  {'memorized fraction':<22}{result['memorized_fraction']:>8.1%}")
    for copies, frac in result["per_group"].items():
        if len(result["per_group"]) > 1:
            print(f"  {'  trained ' + copies + 'x':<22}{frac:>8.1%}")
    if args.generate:
        print(f"  {'greedy generate agrees':<22}{'yes' if result['generate_agrees'] else 'NO':>8}")
        print(f"  {'mean token score':<22}{result['mean_token_score']:>8.3f}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"report: {args.json}")
    return 0


def cmd_unlearn(args) -> int:
    from ..unlearn import unlearn

    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    prefix_len, suffix_len = resolve_window(args.window, args.prefix_len, args.suffix_len)
    record = unlearn(
        args.model,
        args.method,
        args.out,
        overrides=args.overrides,
        forget=args.forget,
        retain=args.retain,
        eval_file=args.eval_file,
        prefix_len=prefix_len,
        suffix_len=suffix_len,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        batch_size=args.batch_size,
        dtype=resolve_dtype(args.dtype),
        device=resolve_device(args.device),
    )
    from ..distributed import is_main_process

    if not is_main_process():
        return 0  # under `accelerate launch`, rank 0 prints and writes
    before, after = record["before"], record["after"]
    res = record["result"]
    print(
        f"{record['method']}: forgot {record['data']['n_forget']} memorized sequences "
        f"(retain set {record['data']['n_retain']}) in {res['seconds']:.1f} s -> {args.out}"
    )
    print(f"  {'':<20}{'before':>10}{'after':>10}")
    print(
        f"  {'memorized':<20}{before['memorized_fraction']:>10.1%}{after['memorized_fraction']:>10.1%}"
        f"   ({before['n_memorized']} -> {after['n_memorized']} of {after['n_candidates']})"
    )
    for key in ("accuracy", "perplexity"):
        if key in before:
            fmt = ".1%" if key == "accuracy" else ".3f"
            print(f"  {key:<20}{before[key]:>10{fmt}}{after[key]:>10{fmt}}")
    print(f"  changed {res['changed_fraction']:.2%} of {res['changed_unit']}", end="")
    print("" if record["score"] is None else f"   score {record['score']:+.3f} (lower is better)")
    return 0


def cmd_restor(args) -> int:
    from ..benchmarks.restor.pipeline import (
        file_task,
        format_restor_table,
        make_restor_config,
        run_restor,
        run_restor_on_model,
    )

    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip() and m != "none"]
    cfg = make_restor_config(
        args.preset, args.overrides, level=args.level, simplified=args.simplified or None
    )
    if args.model is None:
        for flag in ("facts", "entities", "docs", "forget", "retain", "dtype"):
            if getattr(args, flag):
                raise UserError(f"--{flag} needs --model (the synthetic world brings its own data)")
        print(f"unmemorize restor: {cfg.preset} world, level {cfg.unlearn.level} -> {args.out}/")
        summary = run_restor(
            args.out, cfg, methods=methods, overwrite=args.overwrite, progress=not args.no_progress
        )
    else:
        if not args.facts or not args.docs:
            raise UserError("--model needs --facts FILE and --docs FILE (RESTOR format)")
        task = file_task(
            args.facts,
            args.docs,
            entities=args.entities,
            retain=args.retain,
            forget=args.forget,
            simplified=args.simplified,
        )
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


def cmd_restor_stats(args) -> int:
    import json

    from ..benchmarks.restor.facts import fact_stats, load_docs, load_entities, load_facts

    facts = load_facts(args.facts)
    entities = load_entities(args.entities) if args.entities else None
    docs = {path: load_docs(path) for path in args.docs}
    print(json.dumps(fact_stats(facts, entities, docs or None), indent=2))
    return 0


def cmd_ls(args) -> int:
    from ..benchmarks.tinymem.experiment import PRESETS, TASKS, make_experiment
    from ..config import all_keys

    if args.what == "methods":
        from ..unlearn import describe_methods

        for d in describe_methods():
            print(f"{d['name']}  [{d['family']}]  {d['summary']}")
            print(f"    paper: {d['paper']}")
            for f in d["config"]:
                print(f"    {f['name']} = {f['default']!r}  {f['help']}")
            print()
    elif args.what == "presets":
        for name in PRESETS.names():
            doc = (PRESETS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<10} {doc}")
    elif args.what == "tasks":
        print("\n".join(TASKS))
    elif args.what == "regularizers":
        from ..regularizers import REGULARIZERS

        for name in REGULARIZERS.names():
            doc = (REGULARIZERS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:<22} {doc}")
    else:
        exp = make_experiment("cpu-mini", args.task)
        for key in all_keys(exp):
            obj = exp
            for part in key.split("."):
                obj = getattr(obj, part)
            print(f"{key} = {obj}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
