"""Errors that are the user's fault, shared by every layer (foundation: imports nothing).

The command line prints these as one line, ``unmemorize: error: <message>``, with exit status 2
and no traceback; the message says what is wrong and how to fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


__all__ = ["UserError"]
