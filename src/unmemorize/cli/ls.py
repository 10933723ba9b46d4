"""``unmemorize ls``: list methods, audit checks, benchmarks and their search spaces, presets,
tasks, keys."""

from __future__ import annotations

import argparse

#: What ``unmemorize ls`` lists, in the order of its usage line.
KINDS = ("methods", "checks", "benchmarks", "spaces", "presets", "tasks", "regularizers", "keys")

_DIRECTION = {True: "higher is better", False: "lower is better", None: ""}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ls`` to the ``unmemorize`` sub-commands."""
    ls = sub.add_parser(
        "ls",
        help="list methods, audit checks, benchmarks, spaces, presets, tasks, regularizers or "
        "config keys",
    )
    ls.add_argument("what", choices=KINDS)
    ls.add_argument("--task", default="increment", help="task whose config keys to list")
    ls.add_argument(
        "--benchmark", metavar="NAME", help="benchmarks and spaces: only this benchmark"
    )
    ls.set_defaults(handler=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
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
    elif args.what == "checks":
        from ..audit import describe_checks

        for d in describe_checks():
            print(f"{d['name']}  {d['measures']}")
            print(f"    paper: {d['paper']}")
            print(f"    reading: {d['reading']}")
            print()
    elif args.what in ("benchmarks", "spaces"):
        _list_benchmarks(args.what, args.benchmark)
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


def _list_benchmarks(what: str, only: str | None) -> None:
    """``ls benchmarks``: each benchmark's paper, metrics and spaces; ``ls spaces``: the spaces'
    sizes. Built-in benchmarks that fail to import fail the command (never listed as absent)."""
    from ..benchmarks import benchmark_names, get_benchmark
    from ..benchmarks.spaces import space_size

    names = [only] if only is not None else benchmark_names()
    for name in names:
        bench = get_benchmark(name)  # an unknown --benchmark: "did you mean"
        if what == "benchmarks":
            d = bench.describe()
            print(f"{d['name']}  {d['summary']}")
            print(f"    paper: {d['paper']}")
            for m in d["metrics"]:
                direction = _DIRECTION[m["higher_is_better"]]
                print(f"    {m['name']}  {m['label']}" + (f" ({direction})" if direction else ""))
            print(f"    selection: {d['selection']}")
            default = type(bench).default_space
            spaces = ", ".join(d["spaces"]) + (f" (default: {default})" if default else "")
            print(f"    spaces: {spaces or '-'}")
        else:
            print(name)
            for space, spec in type(bench).spaces.items():
                sizes = [space_size(options) for options in spec.values()]
                points = "ranges (TPE only)" if None in sizes else f"{sum(sizes)} points"
                mark = "  (default)" if space == type(bench).default_space else ""
                methods = f"{len(spec):>4} method" + ("" if len(spec) == 1 else "s")
                print(f"  {space:<12}{methods}  {points}{mark}")
        print()
