"""``unmemorize report``: one HTML + Markdown report of run directories."""

from .build import build_report

__all__ = ["build_report"]
