"""The RESTOR benchmark (Rezaei et al., arXiv 2411.00204): corrupt, unlearn, measure restoration."""

from .pipeline import *  # noqa: F403
from .pipeline import __all__  # noqa: F401
