"""Where and how a model runs: device, dtype, context length, memory fit, out-of-memory back-off.

One place for the questions every command asks before it touches a production-size model:

- :func:`resolve_device` / :func:`resolve_dtype` turn ``--device`` / ``--dtype`` into torch
  objects, refusing CUDA where there is none;
- :func:`context_length` and :func:`check_window` keep a prefix + suffix inside the context;
  :data:`WINDOWS` names the published windows and :func:`resolve_window` reads ``--window``;
- :func:`safetensors_parameter_count` reads a model directory's size from the safetensors headers
  (no weights are loaded), and :func:`check_memory_fits` says, before loading, how much memory the
  model needs in the asked dtype and what to try when the device has less;
- :func:`run_in_batches` runs a batched loop and halves the batch on out-of-memory instead of
  crashing (a whole run is not lost because the default batch was too large for a GPU);
- :func:`adamw` trains bfloat16 / float16 weights through float32 master copies, so small
  updates are not rounded away.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import subprocess
import weakref
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # torch is imported where used, so `unmemorize --help` stays fast
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES = ("float32", "bfloat16", "float16")
"""``--dtype`` choices: the names of the torch dtypes."""

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu")
"""``--device-map`` choices: accelerate's placements of one model's layers over every GPU, then
the CPU (``cpu``: all on the CPU through the same path)."""

_SAFETENSORS_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip

#: Loading for evaluation needs the weights plus activations and allocator slack.
EVAL_OVERHEAD = 1.2


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` as a device, refusing CUDA where there is none.

    Under a multi-process launch (``accelerate launch``), a bare ``cuda`` is this process's GPU,
    ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: an unknown device name, or CUDA asked for on a machine without it.
    """
    import torch

    from .distributed import local_rank

    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r}; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "--device cuda was asked for but CUDA is not available on this machine; "
                "use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {dev} does not exist: this machine has {torch.cuda.device_count()} "
                "CUDA device(s), numbered from 0"
            )
        if dev.index is None and local_rank() is not None:
            dev = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return dev


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``float32`` / ``bfloat16`` / ``float16`` (or None: the default, float32) as a torch dtype."""
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def add_runtime_args(
    parser: argparse.ArgumentParser, what: str = "the model", dtype: bool = True
) -> None:
    """Add ``--dtype`` and ``--device`` with the same names, choices and help everywhere.

    ``dtype=False`` adds ``--device`` only (commands that train a fresh model in float32).
    """
    if dtype:
        parser.add_argument(
            "--dtype",
            choices=DTYPES,
            help=f"weights dtype of {what} (default: float32; bfloat16 halves memory on a GPU)",
        )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's forward for training, gradient-method steps and the "
        "memorization pass (opt-in: compiling costs seconds to minutes up front; needs a C++ "
        "compiler on CPU); results are unchanged",
    )


_COMPILE: ContextVar[bool] = ContextVar("unmemorize_compile", default=False)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def compiling(enabled: bool = True):
    """Within the block, :func:`compiled` hands out ``torch.compile``'d models (``--compile``).

    A switch rather than an argument of every loop: the hot loops (TinyMem's trainer,
    :func:`unmemorize.training.train_on_batches`, the gradient methods' trainer, the
    memorization pass) sit several calls below the command that asks for it.
    """
    token = _COMPILE.set(bool(enabled))
    try:
        yield
    finally:
        _COMPILE.reset(token)


def compiled(model):
    """``torch.compile(model)`` (one per model, kept while the model lives) inside
    :func:`compiling`, else ``model`` itself.

    The compiled module shares the model's parameters, so training through it trains the model;
    only forward calls go through it (save, load and state dicts use the plain model).
    """
    if not _COMPILE.get():
        return model
    wrapped = _COMPILED.get(model)
    if wrapped is None:
        import torch

        wrapped = torch.compile(model)
        _COMPILED[model] = wrapped
    return wrapped


def context_length(model) -> int | None:
    """The model's maximum positions (``max_position_embeddings`` / ``n_positions``), if known."""
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


#: Named memorization windows ``(prefix P, suffix K)`` for ``--window``: greedy decoding from the
#: first P tokens must reproduce the next K exactly.
WINDOWS: dict[str, tuple[int, int]] = {
    # Biderman et al. 2023, "Emergent and Predictable Memorization in LLMs" (arXiv 2304.11158):
    # 32-extractable with a 32-token context, on Pythia; the default of sequence files
    "pythia-32-32": (32, 32),
    # TinyMem (Sakarvadia et al. 2024, arXiv 2410.02159), its Pythia experiment
    # (`prod_grade.py: check_percent_memorized`): a 32-token prefix of each 80-token sequence and
    # an exact match on tokens 32..71
    "tinymem-32-40": (32, 40),
}


def resolve_window(
    window: str | None, prefix_len: int | None, suffix_len: int | None
) -> tuple[int | None, int | None]:
    """``--window NAME`` or ``--prefix-len``/``--suffix-len`` as ``(P, K)`` (None: not given).

    Raises:
        ValueError: an unknown window name, or a name given together with an explicit length.
    """
    if window is None:
        return prefix_len, suffix_len
    if prefix_len is not None or suffix_len is not None:
        raise ValueError(
            f"--window sets both lengths ({window}); drop --prefix-len/--suffix-len, or --window"
        )
    if window not in WINDOWS:
        from .registry import suggest

        raise suggest(window, list(WINDOWS), "window")
    return WINDOWS[window]


def add_window_args(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--prefix-len``, ``--suffix-len`` and ``--window`` (defaults read as None).

    Args:
        parser: the sub-command's parser.
        default: what the help says applies when none is given.
    """
    parser.add_argument("--prefix-len", type=int, help=f"P: prompt tokens (default: {default})")
    parser.add_argument(
        "--suffix-len", type=int, help=f"K: tokens that must match (default: {default})"
    )
    names = ", ".join(f"{n} (P={p}, K={k})" for n, (p, k) in WINDOWS.items())
    parser.add_argument("--window", help=f"a named window instead of P and K: {names}")


def check_window(model, prefix_len: int, suffix_len: int) -> None:
    """Raise if a prefix + suffix window does not fit in the model's context."""
    ctx = context_length(model)
    if ctx is not None and prefix_len + suffix_len > ctx:
        raise ValueError(
            f"prefix + suffix = {prefix_len} + {suffix_len} = {prefix_len + suffix_len} tokens "
            f"exceeds the model's context of {ctx}; shorten --prefix-len/--suffix-len"
        )


def safetensors_parameter_count(model_dir: str | Path) -> int:
    """Number of weight elements in a model directory, read from the safetensors headers only.

    A safetensors file starts with an 8-byte header length and a JSON header that lists every
    tensor's dtype, shape and byte range, so the size is known without reading any weights.
    ``safetensors.safe_open`` parses and validates it (header at most 100 MB, valid UTF-8/JSON,
    every shape, byte ranges that cover the file exactly) and maps, not reads, the data.
    """
    from safetensors import SafetensorError, safe_open

    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
        except SafetensorError as err:
            reason = str(err).splitlines()[0] if str(err) else "unreadable"
            reason = reason.removeprefix("Error while deserializing header: ")
            raise ValueError(f"{file} is not a safetensors file ({reason})") from None
    return total


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new model on ``device`` (CUDA: free device memory; CPU: MemAvailable)."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory_fits(
    model_dir: str | Path,
    dtype: torch.dtype | None,
    device: torch.device,
    overhead: float = EVAL_OVERHEAD,
) -> int:
    """Raise a helpful error when ``model_dir`` in ``dtype`` will not fit in ``device``'s memory.

    Returns:
        The estimated bytes needed (weights × ``overhead``).

    Raises:
        MemoryError: the estimate exceeds the free memory; the message says what it needs and
            what to try (a smaller dtype, another device, LoRA for training).
    """
    import torch

    dtype = dtype or torch.float32
    n_params = safetensors_parameter_count(model_dir)
    element = torch.finfo(dtype).bits // 8
    need = int(n_params * element * overhead)
    free = available_memory(device)
    if free is not None and need > free:
        hints = []
        if element > 2:
            hints.append("--dtype bfloat16 (half the memory)")
        if device.type == "cpu" and torch.cuda.is_available():
            hints.append("--device cuda")
        elif device.type == "cuda":
            hints.append("--device cpu")
        hints.append("LoRA (lora_rank=8) for gradient methods")
        raise MemoryError(
            f"{model_dir} has {n_params / 1e9:.2f}B parameters and needs about {_gib(need)} in "
            f"{str(dtype).removeprefix('torch.')} but {device} has {_gib(free)} free; "
            f"try {', '.join(hints)}"
        )
    return need


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors and CPU allocation failures."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(err, oom_type):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def run_in_batches(
    fn: Callable[[int, int], T],
    n: int,
    batch_size: int,
    *,
    what: str = "batch",
) -> list[T]:
    """Call ``fn(start, stop)`` over ``range(n)`` in chunks, halving the chunk on out-of-memory.

    The chunk that ran out of memory is retried at half the size (after freeing the CUDA cache);
    later chunks keep the smaller size. Results come back in order, one per call.

    Raises:
        MemoryError: even a chunk of one row does not fit.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    out: list[T] = []
    start = 0
    while start < n:
        stop = min(n, start + batch_size)
        try:
            out.append(fn(start, stop))
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size == 1:
                raise MemoryError(
                    f"out of memory with a {what} of one row; use a smaller --dtype, a "
                    "device with more memory, or shorter sequences"
                ) from None
            batch_size = max(1, batch_size // 2)
            log.warning("out of memory: retrying with a %s size of %d", what, batch_size)
            continue
        start = stop
    return out


def adamw(params: Iterable[torch.nn.Parameter], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` whose update and state are float32 for every dtype.

    A bfloat16 weight keeps 8 significant bits, so an update below about 2^-9 of the weight
    rounds to nothing: at the learning rates unlearning uses (1e-5), AdamW stepping bfloat16
    weights directly leaves most of them unchanged (measured on a tiny GPT-NeoX, 5 GA steps:
    4% of the parameters changed in bfloat16, 85% in float32). Low-precision parameters
    therefore get float32 master copies, the mixed-precision recipe of Micikevicius et al. 2018
    ("Mixed Precision Training"): the optimizer and its state hold the copies; before each step
    the model's gradients move onto them (in float32), after it the updated copies are rounded
    back into the model. float32 parameters are optimized directly. Memory: 4 bytes per
    low-precision parameter for its copy, and AdamW's two moments in float32.

    The loop is the usual ``zero_grad(); loss.backward(); step()`` (a learning-rate schedule
    attaches to the returned optimizer as to any other).
    """
    import torch

    params = list(params)
    pairs = [
        (p, p.detach().float().clone().requires_grad_(True))
        for p in params
        if p.dtype in (torch.bfloat16, torch.float16)
    ]
    if not pairs:
        return torch.optim.AdamW(params, **kwargs)
    master = {id(p): m for p, m in pairs}
    optimizer = torch.optim.AdamW([master.get(id(p), p) for p in params], **kwargs)

    def grads_to_master(_optimizer, _args, _kwargs) -> None:
        for p, m in pairs:
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    @torch.no_grad()
    def master_to_model(_optimizer, _args, _kwargs) -> None:
        for p, m in pairs:
            p.copy_(m)

    optimizer.register_step_pre_hook(grads_to_master)
    optimizer.register_step_post_hook(master_to_model)
    return optimizer


__all__ = [
    "compiled",
    "compiling",
    "DEVICE_MAPS",
    "DTYPES",
    "WINDOWS",
    "adamw",
    "add_runtime_args",
    "add_window_args",
    "available_memory",
    "check_memory_fits",
    "check_window",
    "context_length",
    "is_out_of_memory",
    "resolve_device",
    "resolve_dtype",
    "resolve_window",
    "run_in_batches",
    "safetensors_parameter_count",
]


def environment() -> dict:
    """Versions and machine facts recorded in every run.json."""
    import torch
    import transformers

    sha = None
    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_sha": sha,
    }
