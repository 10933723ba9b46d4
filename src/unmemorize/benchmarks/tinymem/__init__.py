"""The TinyMem benchmark (Sakarvadia et al., arXiv 2410.02159): data, training, presets, demo."""

from .experiment import *  # noqa: F403
from .experiment import __all__  # noqa: F401
