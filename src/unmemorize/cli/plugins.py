"""Sub-commands that live in their own module, so ``cli.py`` stays a thin dispatcher.

Each module here defines ``register(sub)``: it adds one sub-parser to ``sub`` (the
``argparse`` sub-parsers object of ``unmemorize``) and sets its handler with
``parser.set_defaults(handler=cmd_fn)``; ``cmd_fn(args) -> int`` runs the command. Errors that
are the user's fault are raised as :class:`unmemorize.cli.UserError` (or ``ValueError``,
``FileNotFoundError``, ...), which ``cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib

#: Command modules, in the order their commands appear in ``unmemorize --help``.
COMMAND_MODULES: tuple[str, ...] = ("sweep", "mine", "report")


def register_all(sub: argparse._SubParsersAction) -> None:
    """Add every command of :data:`COMMAND_MODULES` to ``sub``."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
