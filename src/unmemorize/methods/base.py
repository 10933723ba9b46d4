"""The interface every mitigation method implements, and the pieces they share.

A method is a class registered in :data:`METHODS` with a config dataclass (``Config``: the paper's
defaults, one docstring line per field) and ``apply(model, data) -> UnlearnResult``. ``apply``
never mutates its input: it deep-copies the model, edits the copy, and returns it.

Shapes: U forget rows, R retain rows, T positions, F MLP width (neurons per layer).

Families (``Method.family``):

* ``"neuron"``: score every FFN neuron of every layer, remove the top ``ratio`` of each layer
  (:class:`NeuronMethod`, which shares the edit).
* ``"weight"``: score or learn per-weight masks on the MLP matrices and zero the chosen weights.
* ``"finetune"``: continue training on clean data.
* ``"dampening"``: scale weights down (SSD).
* ``"gradient"``: optimize a forget objective on U (gradient ascent, NPO, SimNPO, KL to the
  starting model) with an optional retain term on R, or subtract a task vector (RESTOR's
  methods, :mod:`unmemorize.methods.gradient`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from ..config import parse_overrides, parse_value
from ..metrics.losses import sequence_losses
from ..mlp import MLPAdapter, ratio_count
from ..registry import Registry, suggest
from .data import UnlearnData
from .masking import edited_layers

METHODS: Registry[type[Method]] = Registry("method")


class MethodDivergedError(RuntimeError):
    """A method produced a NaN/inf loss or weights; nothing is written."""


# --------------------------------------------------------------------------- result


@dataclass
class UnlearnResult:
    """What a method returns.

    Attributes:
        model: the edited model (a new object; the input model is untouched).
        seconds: wall-clock seconds of the method itself (scoring + edit / training).
        changed_fraction: fraction of the edited units that changed (see ``changed_unit``).
        changed_unit: what ``changed_fraction`` counts: ``"neurons"`` (of all MLP neurons),
            ``"mlp_weights"`` (of all MLP weight entries), ``"parameters"`` (of all parameters).
        changed_count: the number of changed units.
        losses: the training-loss curve (one value per optimizer step), empty for one-shot edits.
        info: method-specific facts (e.g. steps taken, early stop), JSON-able.
    """

    model: PreTrainedModel
    seconds: float
    changed_fraction: float
    changed_unit: str
    changed_count: int = 0
    losses: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-able summary (everything but the model)."""
        return {
            "seconds": self.seconds,
            "changed_fraction": self.changed_fraction,
            "changed_unit": self.changed_unit,
            "changed_count": self.changed_count,
            "n_steps": len(self.losses),
            "final_loss": self.losses[-1] if self.losses else None,
            "info": self.info,
        }


# --------------------------------------------------------------------------- method


class Method:
    """Base class: subclasses set ``name``, ``family``, ``paper``, ``Config`` and ``run``.

    ``run(model, data, config)`` edits ``model`` (already a private copy) in place and returns
    ``(changed_count, changed_total, changed_unit, losses, info)`` as an :class:`Edit`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        cfg = self.Config() if config is None else config
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
        self.config = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def apply(
        self, model: PreTrainedModel, data: UnlearnData, *, progress: bool = False
    ) -> UnlearnResult:
        """Run the method on a copy of ``model``; the input model is never modified.

        Raises:
            MethodDivergedError: when a loss or an edited weight becomes NaN or infinite.
        """
        edited = copy.deepcopy(model)
        edited.eval()
        seed = getattr(self.config, "seed", 0)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            edit = self.run(edited, data, progress)
        seconds = time.perf_counter() - start
        edited.eval()
        for p in edited.parameters():
            p.requires_grad_(True)
        for name, param in edited.named_parameters():
            if not all_finite(param):
                raise MethodDivergedError(
                    f"{self.name} produced non-finite weights in {name}; lower its learning "
                    "rate or ratio (nothing was written)"
                )
        return UnlearnResult(
            model=edited,
            seconds=seconds,
            changed_fraction=edit.count / edit.total if edit.total else 0.0,
            changed_unit=edit.unit,
            changed_count=edit.count,
            losses=edit.losses,
            info=edit.info,
        )

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        raise NotImplementedError

    @classmethod
    def describe(cls) -> dict:
        """Name, family, paper and config fields with defaults and help (for ``ls methods``)."""
        return {
            "name": cls.name,
            "family": cls.family,
            "paper": cls.paper,
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "config": config_fields(cls.Config),
        }


@dataclass
class Edit:
    """What :meth:`Method.run` did to the model."""

    count: int
    total: int
    unit: str
    losses: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def config_fields(cls: type) -> list[dict]:
    """[{name, default, help}] of a config dataclass; help is the docstring under each field."""
    import ast
    import inspect
    import textwrap

    helps: dict[str, str] = {}
    # Base classes first, so a subclass's docstring wins for a field it redeclares.
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                helps[node.target.id] = " ".join(nxt.value.value.split())
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out.append({"name": f.name, "default": default, "help": helps.get(f.name, "")})
    return out


def build_method(
    name: str, overrides: Sequence[str] | dict[str, Any] = (), **kwargs: Any
) -> Method:
    """Instantiate a registered method from its name and ``key=value`` overrides (or a dict).

    Raises:
        UnknownNameError: for an unknown method or config key (with the nearest suggestion).
        ValueError: for a value that does not parse or fails validation.
    """
    cls = METHODS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    hints = _type_hints(cls.Config)
    values: dict[str, Any] = dict(kwargs)
    if isinstance(overrides, dict):
        items = overrides.items()
    else:
        split = parse_overrides(overrides, what="method option", example="ratio=0.05")
        items = ((_strip_method_prefix(key), value) for key, value in split)
    for key, value in items:
        if key not in fields:
            raise suggest(key, list(fields), f"{name} option", f"(options: {', '.join(fields)})")
        if isinstance(value, str):
            try:
                value = parse_value(value, hints[key])
            except ValueError as err:
                raise ValueError(f"{name} option {key}: {err}") from None
        values[key] = value
    return cls(**values)


def _strip_method_prefix(key: str) -> str:
    """``method.ratio`` -> ``ratio``: an option may be written with the ``method.`` prefix."""
    return key[len("method.") :] if key.startswith("method.") else key


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


# --------------------------------------------------------------------------- shared helpers


def all_finite(tensor: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """``torch.isfinite(tensor).all()``, a chunk at a time: the check's temporaries stay a few MB
    (whole-tensor ``isfinite`` made a float and a bool copy of a model's largest matrix)."""
    flat = tensor.detach().reshape(-1)
    return all(
        bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk)
    )


def check_ratio(ratio: float, what: str = "ratio") -> None:
    """Raise a clear error unless ``0 < ratio < 1``."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"{what} must lie strictly between 0 and 1 (e.g. 0.05 = 5%), got {ratio}")


def check_positive(value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value}")


def check_finite_loss(loss: torch.Tensor, method: str, step: int) -> float:
    """Return ``loss`` as a float, raising :class:`MethodDivergedError` if it is NaN/inf."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise MethodDivergedError(
            f"{method} diverged: the loss became {value} at step {step}; lower its learning rate "
            "(nothing was written)"
        )
    return value


def row_batches(
    n: int, batch_size: int, *, generator: torch.Generator | None = None, shuffle: bool = False
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(n)`` in batches (shuffled with ``generator``)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def mean_sequence_loss(
    model: PreTrainedModel, ids: torch.Tensor, pad_id: int | None
) -> torch.Tensor:
    """Mean over rows of each row's token-mean next-token cross-entropy (pad excluded); scalar."""
    return sequence_losses(model, ids.to(model_device(model)), pad_id).mean()


def forget_retain_batches(
    data: UnlearnData, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch over U ∪ R: yields ``(ids [B, T], is_forget [B] bool)``.

    The TinyMem loader for Greedy and BalancedSubnet (labels +1 for U, -1 for R).
    """
    ids = torch.cat([data.forget_ids, data.retain_ids])
    is_forget = torch.zeros(len(ids), dtype=torch.bool)
    is_forget[: data.n_forget] = True
    for idx in row_batches(len(ids), batch_size, generator=generator, shuffle=True):
        yield ids[idx], is_forget[idx]


def freeze(model: PreTrainedModel) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


# --------------------------------------------------------------------------- neuron family


class NeuronMethod(Method):
    """Neuron-level methods: score every MLP neuron, remove the top ``ratio`` of each layer.

    Subclasses implement ``score(model, data, progress) -> list[Tensor [F]]`` (one per edited
    layer, :meth:`layer_indices`; higher = more responsible for the memorized sequences). The
    edit, shared by all, removes ``floor(F * ratio)`` neurons per edited layer through
    :meth:`MLPAdapter.zero_neurons_` (exact layer matching; the original code's substring match
    hit layers 10-19 for layer 1).
    """

    family = "neuron"

    def score(
        self, model: PreTrainedModel, data: UnlearnData, progress: bool
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def layer_indices(self, adapter: MLPAdapter) -> list[int]:
        """The layers this method scores and edits (config ``layers``; default every layer)."""
        return edited_layers(adapter, getattr(self.config, "layers", None))

    def run(self, model: PreTrainedModel, data: UnlearnData, progress: bool) -> Edit:
        adapter = MLPAdapter(model)
        layers = self.layer_indices(adapter)
        scores = self.score(model, data, progress)
        removed = remove_top_neurons_(adapter, scores, self.config.ratio, layers)
        total = sum(adapter.layer(i).width for i in layers)
        return Edit(removed, total, "neurons", info={"neurons_removed": removed})


@torch.no_grad()
def remove_top_neurons_(
    adapter: MLPAdapter,
    scores: Sequence[torch.Tensor],
    ratio: float,
    layers: Sequence[int] | None = None,
) -> int:
    """Remove the ``floor(F * ratio)`` highest-scoring neurons of each of ``layers`` (None: every
    layer; ``scores`` holds one vector per layer, in that order); return the count."""
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    if len(scores) != len(layers):
        raise ValueError(f"expected {len(layers)} score vectors, got {len(scores)}")
    removed = 0
    for index, layer_scores in zip(layers, scores, strict=True):
        width = adapter.layer(index).width
        if layer_scores.shape != (width,):
            raise ValueError(f"layer {index} scores have shape {tuple(layer_scores.shape)}")
        if not torch.isfinite(layer_scores).all():
            raise MethodDivergedError(f"neuron scores of layer {index} are not finite")
        k = ratio_count(width, ratio)
        if k == 0:
            continue
        top = torch.topk(layer_scores.float(), k).indices
        adapter.zero_neurons_(index, top)
        removed += k
    return removed


__all__ = [
    "METHODS",
    "Edit",
    "Method",
    "MethodDivergedError",
    "NeuronMethod",
    "UnlearnResult",
    "all_finite",
    "build_method",
    "check_finite_loss",
    "check_positive",
    "check_ratio",
    "config_fields",
    "forget_retain_batches",
    "freeze",
    "mean_sequence_loss",
    "model_device",
    "remove_top_neurons_",
    "row_batches",
]
