"""One generic registry, used for every kind of pluggable thing (presets, methods, metrics).

Each thing registers once, by decorator, where it is defined::

    PRESETS = Registry("preset")

    @PRESETS.register("cpu-mini")
    def cpu_mini() -> ExperimentConfig: ...

Looking up an unknown name raises :class:`UnknownNameError`, whose message lists the nearest
registered names, so a typo on the command line gets a "did you mean" answer instead of a KeyError.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name that is not in a registry (or not among a fixed set of choices)."""


def suggest(
    name: str, choices: list[str] | tuple[str, ...], kind: str, more: str = ""
) -> UnknownNameError:
    """Build the error for an unknown ``name``, naming the closest of ``choices``.

    Args:
        name: what the user typed.
        choices: the valid names.
        kind: what they are ("preset", "config key", ...).
        more: a closing hint, e.g. where to list the choices when there are many.
    """
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = f"choose one of: {', '.join(sorted(choices))}" if len(choices) <= 12 else ""
    parts = [x for x in (hint, listing, more) if x]
    return UnknownNameError(f"unknown {kind} {name!r}: " + " ".join(parts))


class Registry(Generic[T]):
    """A name -> object table with helpful errors.

    Args:
        kind: what the entries are ("method", "preset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | T) -> Callable[[T], T] | T:
        """Register a thing once, by decorator.

        ``@REG.register("name")`` registers its target under ``"name"``; a bare ``@REG.register``
        on a class registers it under its own ``name`` attribute, so the name is written once.
        """
        if not isinstance(name, str):
            obj = name
            own = getattr(obj, "name", "")
            if not isinstance(own, str) or not own:
                raise ValueError(
                    f"a {self.kind} registered without a name needs a `name` attribute"
                )
            return self.register(own)(obj)

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plugins that register temporarily)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`UnknownNameError` with suggestions."""
        try:
            return self._entries[name]
        except KeyError:
            raise suggest(name, list(self._entries), self.kind) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
