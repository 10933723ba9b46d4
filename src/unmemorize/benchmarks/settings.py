"""Named settings of a benchmark: its own defaults, or the original papers' configuration, as data.

A :class:`Settings` is what ``--settings NAME`` selects (``default`` or ``paper``): per-method
config defaults, the search space each of the benchmark's spaces is replaced by, and
benchmark-level switches (data, evaluation). Each benchmark owns its settings as data in its
package (``benchmarks/tinymem/settings.py``, ``benchmarks/restor/settings.py``) and applies them in
one place (its experiment / pipeline); methods never know which settings run them. A point of the
search space overrides the settings' method defaults, and ``key=value`` overrides typed by the
user override both.

Why both exist: the ``default`` settings fix bugs and leaks of the original code and retune what
did not work on CPU-size models (each difference argued in the method's config docstring and in
the README's "Paper settings vs defaults"); ``paper`` runs the original code's configuration, so a
difference from a paper can be told apart from a difference of implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The settings every benchmark offers.
SETTINGS_NAMES = ("default", "paper")


@dataclass(frozen=True)
class Settings:
    """One named configuration of a benchmark.

    Attributes:
        name: ``default`` or ``paper`` (recorded as ``"settings"`` in summary.json / run.json).
        summary: one line for ``--help`` and the README.
        methods: ``{method: {option: value}}`` config defaults under every point of the space.
        spaces: ``{space: replacement space name}``: the space a command runs is replaced by the
            named one (e.g. TinyMem's ``demo`` -> ``paper-demo``); a space not named stays.
        switches: benchmark-level options (TinyMem: ``legacy_accuracy``, ``retain``,
            ``noise_twins``; RESTOR: config ``key=value`` overrides).
        not_reproduced: bugs of the original code these settings deliberately do not reproduce.
    """

    name: str
    summary: str
    methods: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    spaces: Mapping[str, str] = field(default_factory=dict)
    switches: Mapping[str, Any] = field(default_factory=dict)
    not_reproduced: Sequence[str] = ()

    def space_name(self, name: str) -> str:
        """The space to run instead of ``name`` under these settings."""
        return self.spaces.get(name, name)

    def method_options(self, method: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (a space point) over these settings' defaults of ``method``."""
        return {**self.methods.get(method, {}), **options}


DEFAULT = Settings("default", "the fixed defaults of this project (bugs and leaks fixed)")


def get_settings(table: Mapping[str, Settings], name: str | None, benchmark: str) -> Settings:
    """``table[name]`` (None: ``default``), with a did-you-mean error for an unknown name."""
    key = name or "default"
    if key not in table:
        from ..registry import suggest

        raise suggest(key, list(table), "settings", f"(settings of benchmark {benchmark!r})")
    return table[key]


__all__ = ["DEFAULT", "SETTINGS_NAMES", "Settings", "get_settings"]
