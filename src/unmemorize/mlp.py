"""Uniform access to the feed-forward (MLP) blocks of Hugging Face causal LMs.

Every neuron- and weight-level method goes through :class:`MLPAdapter`, so architecture details
live in one place. Three layouts are supported, detected from the module structure (not from
``config.model_type``), so unknown Llama-like model types work too:

* ``"gpt2"``: ``transformer.h[i].mlp.c_fc`` / ``.c_proj``. In GPT-2 these are
  ``transformers.pytorch_utils.Conv1D`` whose ``.weight`` is already stored [in, out].
* ``"gpt_neox"`` (Pythia): ``gpt_neox.layers[i].mlp.dense_h_to_4h`` / ``.dense_4h_to_h``,
  ``nn.Linear`` (weight stored [out, in]).
* ``"llama"`` (Llama, Mistral, Qwen2/3, Gemma/Gemma2, OLMo/OLMo2, ...): ``model.layers[i].mlp``
  with ``gate_proj`` and ``up_proj`` (the two input branches) and ``down_proj`` (the output).
  Phi-3's fused ``gate_up_proj`` is handled as the same family.

Vocabulary: B batch, T positions, D d_model, F MLP width (the number of hidden units, "neurons").
A neuron's activation is the input of the out projection (``act(x W_in)`` or, for gated MLPs,
``act(x W_gate) * (x W_up)``), so hooks that read or scale neurons are forward pre-hooks on the out
projection.

Layers are identified by their exact parameter names (``transformer.h.3.mlp.c_fc.weight``); never
match layers by substring (``"1" in name`` also matches layers 10-19).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.pytorch_utils import Conv1D

from .registry import suggest

logger = logging.getLogger(__name__)

Family = Literal["gpt2", "gpt_neox", "llama"]

#: Supported layouts, for error messages: family -> (input projection names, output name).
SUPPORTED_LAYOUTS: dict[str, str] = {
    "gpt2": "mlp.c_fc -> mlp.c_proj (GPT-2 Conv1D or nn.Linear)",
    "gpt_neox": "mlp.dense_h_to_4h -> mlp.dense_4h_to_h (GPT-NeoX / Pythia)",
    "llama": "mlp.gate_proj + mlp.up_proj (or fused mlp.gate_up_proj) -> mlp.down_proj "
    "(Llama, Mistral, Qwen, Gemma, OLMo, Phi-3, ...)",
}

ActivationHook = Callable[[nn.Module, torch.Tensor], "torch.Tensor | None"]


def ratio_count(total: int, ratio: float) -> int:
    """``floor(ratio · total)``: how many of ``total`` neurons or weights a ``ratio`` selects.

    Computed on the decimal value of ``ratio`` as written (``repr``, the shortest decimal that
    reads back as the same float), not on its binary approximation: ``int(100 * 0.29)`` is 28
    because 0.29 is stored as 0.28999..., while "29% of 100 neurons" means 29. The count is
    monotone in ``ratio`` and lies in ``[0, total]`` for ``ratio`` in ``[0, 1]``.
    """
    if total < 0:
        raise ValueError(f"total must be non-negative, got {total}")
    exact = Decimal(repr(float(ratio))) * int(total)
    return int(exact.to_integral_value(rounding=ROUND_FLOOR))


def _supported_text() -> str:
    return (
        "; ".join(f"{k}: {v}" for k, v in SUPPORTED_LAYOUTS.items())
        + ". To add a family, teach MLPAdapter._detect in unmemorize/mlp.py its module names"
    )


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D stores its weight [in, out]; nn.Linear stores [out, in].
    return isinstance(module, Conv1D)


def in_out_view(module: nn.Module) -> torch.Tensor:
    """View of a Linear/Conv1D ``module.weight`` oriented [in, out], sharing its storage.

    GPT-2's ``Conv1D`` already stores [in, out]; ``nn.Linear`` stores [out, in] so this is
    ``weight.T``. In-place edits of the view edit the parameter.
    """
    weight = module.weight
    return weight if _is_conv1d(module) else weight.T


@dataclass(frozen=True, eq=False)
class MLPLayer:
    """The MLP block of one decoder layer.

    Attributes:
        index: layer index, 0-based.
        in_projs: input projection modules: ``(c_fc,)`` for gpt2, ``(dense_h_to_4h,)`` for
            gpt_neox, ``(gate_proj, up_proj)`` for llama, ``(gate_up_proj,)`` for fused Phi-3.
        out_proj: the output projection module (``c_proj`` / ``dense_4h_to_h`` / ``down_proj``).
        in_weight_names: exact parameter names of the input projection weights.
        out_weight_name: exact parameter name of the output projection weight.
        param_names: exact names of every parameter of this MLP block (weights and biases).
        fused_gate_up: True when gate and up projections are one fused matrix (Phi-3).
        d_model: D, the residual width.
        width: F, the number of hidden units (neurons).
    """

    index: int
    in_projs: tuple[nn.Module, ...]
    out_proj: nn.Module
    in_weight_names: tuple[str, ...]
    out_weight_name: str
    param_names: tuple[str, ...]
    fused_gate_up: bool
    d_model: int
    width: int


@dataclass(frozen=True, eq=False)
class MLPWeight:
    """One MLP weight matrix, for weight-level methods (per-weight masks and scores).

    Attributes:
        name: exact parameter name, e.g. ``"transformer.h.3.mlp.c_fc.weight"``.
        parameter: the parameter itself.
        transposed: True when the parameter is stored [out, in] (``nn.Linear``), i.e. it is the
            transpose of the [in, out] orientation that masks use; False for GPT-2 ``Conv1D``.
        layer: index of the decoder layer it belongs to.
        role: ``"in"`` (input projection) or ``"out"`` (output projection).
    """

    name: str
    parameter: nn.Parameter
    transposed: bool
    layer: int
    role: Literal["in", "out"]

    def in_out(self) -> torch.Tensor:
        """The weight viewed [in, out] (a view: in-place edits change the model)."""
        return self.parameter.T if self.transposed else self.parameter


@dataclass(frozen=True)
class MaskStats:
    """What an in-place weight edit changed.

    Attributes:
        changed: number of weight entries whose value changed.
        total: number of entries in all MLP weight matrices of the model.
    """

    changed: int
    total: int

    @property
    def fraction(self) -> float:
        """``changed / total``."""
        return self.changed / self.total if self.total else 0.0


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a model: ``model.base_model.h`` or ``model.base_model.layers``.

    Raises:
        ValueError: if neither exists.
    """
    base = getattr(model, "base_model", model)
    for candidate in (base, model):
        for attr in ("h", "layers"):
            layers = getattr(candidate, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} "
        f"(model_type={_model_type(model)!r}): expected `model.base_model.h` or "
        f"`model.base_model.layers`. Supported MLP layouts: {_supported_text()}"
    )


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


class MLPAdapter:
    """Per-layer access to the MLP blocks of a causal LM.

    Args:
        model: a ``transformers`` model (or any module with the same structure) of a supported
            family; see :data:`SUPPORTED_LAYOUTS`.

    Raises:
        ValueError: if the model's decoder layers or MLP projections cannot be recognized.

    Example::

        adapter = MLPAdapter(model)
        w_out = adapter.out_weight(3)                # [F, D] view of layer 3's out projection
        with adapter.capture_activations() as acts:  # acts[i]: [B, T, F]
            model(input_ids)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        layers = find_decoder_layers(model)
        module_names = {id(m): n for n, m in model.named_modules()}
        self._layers: list[MLPLayer] = []
        family: Family | None = None
        for index, block in enumerate(layers):
            layer_family, in_projs, out_proj, fused = self._detect(model, block, index)
            if family is not None and layer_family != family:
                raise ValueError(
                    f"layer {index} has a {layer_family} MLP but earlier layers are {family}; "
                    "mixed MLP layouts are not supported"
                )
            family = layer_family
            self._layers.append(self._describe(index, in_projs, out_proj, fused, module_names))
        assert family is not None
        self.family: Family = family
        self.model_type: str | None = _model_type(model)
        logger.debug(
            "MLPAdapter: family=%s model_type=%s layers=%d D=%d",
            self.family,
            self.model_type,
            len(self._layers),
            self._layers[0].d_model,
        )

    # ------------------------------------------------------------------ detection

    @staticmethod
    def _detect(
        model: nn.Module, block: nn.Module, index: int
    ) -> tuple[Family, tuple[nn.Module, ...], nn.Module, bool]:
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise ValueError(
                f"decoder layer {index} of {type(model).__name__} "
                f"(model_type={_model_type(model)!r}) has no `.mlp` submodule. "
                f"Supported MLP layouts: {_supported_text()}"
            )
        if hasattr(mlp, "c_fc") and hasattr(mlp, "c_proj"):
            return "gpt2", (mlp.c_fc,), mlp.c_proj, False
        if hasattr(mlp, "dense_h_to_4h") and hasattr(mlp, "dense_4h_to_h"):
            return "gpt_neox", (mlp.dense_h_to_4h,), mlp.dense_4h_to_h, False
        if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj") and hasattr(mlp, "down_proj"):
            return "llama", (mlp.gate_proj, mlp.up_proj), mlp.down_proj, False
        if hasattr(mlp, "gate_up_proj") and hasattr(mlp, "down_proj"):
            return "llama", (mlp.gate_up_proj,), mlp.down_proj, True
        children = ", ".join(name for name, _ in mlp.named_children()) or "none"
        raise ValueError(
            f"unsupported MLP in layer {index} of {type(model).__name__} "
            f"(model_type={_model_type(model)!r}; its children: {children}). "
            f"Supported MLP layouts: {_supported_text()}"
        )

    @staticmethod
    def _describe(
        index: int,
        in_projs: tuple[nn.Module, ...],
        out_proj: nn.Module,
        fused: bool,
        module_names: Mapping[int, str],
    ) -> MLPLayer:
        for module in (*in_projs, out_proj):
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
                raise ValueError(
                    f"MLP projection {type(module).__name__} in layer {index} has no 2-D `.weight`; "
                    "only Linear/Conv1D projections are supported (quantized layers are not)"
                )
        out_view = in_out_view(out_proj)  # [F, D]
        width, d_model = out_view.shape
        expected_in = (d_model, 2 * width) if fused else (d_model, width)
        for module in in_projs:
            if tuple(in_out_view(module).shape) != expected_in:
                raise ValueError(
                    f"layer {index}: input projection weight has shape "
                    f"{tuple(in_out_view(module).shape)} ([in, out]) but the output projection "
                    f"implies {expected_in}"
                )

        def pname(module: nn.Module, suffix: str) -> str:
            return f"{module_names[id(module)]}.{suffix}"

        params: list[str] = []
        for module in (*in_projs, out_proj):
            params.extend(pname(module, n) for n, _ in module.named_parameters(recurse=False))
        return MLPLayer(
            index=index,
            in_projs=in_projs,
            out_proj=out_proj,
            in_weight_names=tuple(pname(m, "weight") for m in in_projs),
            out_weight_name=pname(out_proj, "weight"),
            param_names=tuple(params),
            fused_gate_up=fused,
            d_model=int(d_model),
            width=int(width),
        )

    # ------------------------------------------------------------------ sizes

    @property
    def n_layers(self) -> int:
        """Number of decoder layers (each with one MLP)."""
        return len(self._layers)

    @property
    def d_model(self) -> int:
        """D, the residual width."""
        return self._layers[0].d_model

    @property
    def width(self) -> int:
        """F, the number of hidden units per layer.

        Raises:
            ValueError: if layers have different widths (use ``layer(i).width`` then).
        """
        widths = {layer.width for layer in self._layers}
        if len(widths) != 1:
            raise ValueError(
                f"MLP width differs across layers ({sorted(widths)}); use layer(i).width"
            )
        return self._layers[0].width

    def neuron_count(self) -> int:
        """Total number of MLP hidden units over all layers."""
        return sum(layer.width for layer in self._layers)

    def layer(self, index: int) -> MLPLayer:
        """Describe layer ``index`` (modules and exact parameter names)."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"layer index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self._layers):
            raise IndexError(
                f"layer {index} out of range: the model has {len(self._layers)} MLP layers "
                f"(0..{len(self._layers) - 1})"
            )
        return self._layers[index]

    @property
    def layers(self) -> tuple[MLPLayer, ...]:
        """All layers, in order."""
        return tuple(self._layers)

    # ------------------------------------------------------------------ weights

    def in_weights(self, index: int) -> list[torch.Tensor]:
        """Input projection weights of layer ``index``, each viewed [D, F].

        One tensor for gpt2/gpt_neox, two (gate, then up) for llama. The tensors are views sharing
        storage with the parameters, so in-place edits through them edit the model.
        """
        layer = self.layer(index)
        if layer.fused_gate_up:
            # Phi-3 computes `gate, up = gate_up_proj(x).chunk(2, dim=-1)`: gate is the first half
            # of the output features.
            fused = in_out_view(layer.in_projs[0])  # [D, 2F]
            return [fused[:, : layer.width], fused[:, layer.width :]]
        return [in_out_view(module) for module in layer.in_projs]

    def out_weight(self, index: int) -> torch.Tensor:
        """Output projection weight of layer ``index`` viewed [F, D] (shares storage)."""
        return in_out_view(self.layer(index).out_proj)

    def weight_matrices(self, layers: Sequence[int] | None = None) -> list[MLPWeight]:
        """The MLP weight matrices of ``layers`` (None: every layer), layer by layer (inputs
        first, then output)."""
        params = dict(self.model.named_parameters())
        result: list[MLPWeight] = []
        chosen = self._layers if layers is None else [self.layer(i) for i in sorted(layers)]
        for layer in chosen:
            for module, name in zip(layer.in_projs, layer.in_weight_names, strict=True):
                result.append(
                    MLPWeight(name, params[name], not _is_conv1d(module), layer.index, "in")
                )
            result.append(
                MLPWeight(
                    layer.out_weight_name,
                    params[layer.out_weight_name],
                    not _is_conv1d(layer.out_proj),
                    layer.index,
                    "out",
                )
            )
        return result

    @torch.no_grad()
    def apply_weight_masks_(self, masks: Mapping[str, torch.Tensor]) -> MaskStats:
        """Multiply MLP weights in place by masks (``W <- W * M``), zeroing the masked weights.

        Args:
            masks: exact parameter name -> mask in [in, out] orientation (the shape of
                ``MLPWeight.in_out()``), bool (True keeps, False zeroes) or float (multiplier).

        Returns:
            How many weight entries changed, out of all MLP weight entries.

        Raises:
            ValueError: for a name that is not an MLP weight matrix or a mask of the wrong shape.
        """
        by_name = {w.name: w for w in self.weight_matrices()}
        for name, mask in masks.items():
            if name not in by_name:
                raise suggest(name, list(by_name), "MLP weight name")
            expected = tuple(by_name[name].in_out().shape)
            if tuple(mask.shape) != expected:
                hint = " (it looks transposed)" if tuple(mask.shape) == expected[::-1] else ""
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}{hint}; masks are "
                    f"[in, out] = {expected}"
                )
        changed = 0
        for name, mask in masks.items():
            view = by_name[name].in_out()
            mask = mask.to(device=view.device)
            multiplier = mask if mask.dtype == torch.bool else mask.to(view.dtype)
            if mask.dtype == torch.bool:
                differs = (view != 0) & ~mask
            else:
                differs = (view * multiplier) != view
            changed += int(differs.sum())
            view.mul_(multiplier)
        total = sum(w.parameter.numel() for w in by_name.values())
        stats = MaskStats(changed=changed, total=total)
        logger.debug("apply_weight_masks_: changed %d of %d MLP weights", changed, total)
        return stats

    # ------------------------------------------------------------------ neurons

    def _check_neuron_mask(self, index: int, mask: torch.Tensor) -> None:
        width = self.layer(index).width
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"neuron mask for layer {index} must be a tensor, got {type(mask)}")
        if mask.ndim not in (1, 2) or mask.shape[-1] != width:
            raise ValueError(
                f"neuron mask for layer {index} has shape {tuple(mask.shape)}; expected [F] = "
                f"[{width}] (same for every example) or [B, {width}] (one mask per example)"
            )

    def add_activation_hook(self, index: int, fn: ActivationHook) -> RemovableHandle:
        """Register ``fn(out_proj, activations)`` on the neurons of layer ``index``.

        ``activations`` is the input of the out projection, [B, T, F]. If ``fn`` returns a tensor,
        it replaces the activations (for masks); if it returns None they are left unchanged.
        The caller owns the returned handle and must ``.remove()`` it.
        """
        out_proj = self.layer(index).out_proj

        def pre_hook(module: nn.Module, args: tuple) -> tuple | None:
            if not args:
                raise RuntimeError(
                    f"layer {index}: the MLP out projection was called without a positional input"
                )
            replaced = fn(module, args[0])
            return None if replaced is None else (replaced, *args[1:])

        return out_proj.register_forward_pre_hook(pre_hook)

    @contextlib.contextmanager
    def capture_activations(
        self, layers: Sequence[int] | None = None, keep_graph: bool = False
    ) -> Iterator[dict[int, torch.Tensor]]:
        """Record the neuron activations of each forward pass.

        Args:
            layers: layer indices to record; None records all.
            keep_graph: keep the autograd graph (for gradient-based scorers); by default the
                activations are detached.

        Yields:
            A dict layer index -> activations [B, T, F], filled (overwritten) by every forward
            pass run inside the context. Hooks are removed on exit, even on error.
        """
        indices = list(range(self.n_layers)) if layers is None else [int(i) for i in layers]
        for index in indices:
            self.layer(index)  # validates the index before any hook is installed
        captured: dict[int, torch.Tensor] = {}
        handles: list[RemovableHandle] = []

        def make(index: int) -> ActivationHook:
            def record(module: nn.Module, activations: torch.Tensor) -> None:
                captured[index] = activations if keep_graph else activations.detach()

            return record

        try:
            for index in indices:
                handles.append(self.add_activation_hook(index, make(index)))
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def neuron_mask(self, masks: Mapping[int, torch.Tensor]) -> Iterator[None]:
        """Multiply the neuron activations of some layers by masks while inside the context.

        Args:
            masks: layer index -> mask [F] (broadcast over B and T) or [B, F] (one per example,
                broadcast over T). Masks may require grad (learnable gates); the product is
                differentiable.

        Hooks are removed on exit, even on error.
        """
        for index, mask in masks.items():
            self._check_neuron_mask(index, mask)
        handles: list[RemovableHandle] = []

        def make(mask: torch.Tensor) -> ActivationHook:
            def apply(module: nn.Module, activations: torch.Tensor) -> torch.Tensor:
                m = mask.to(device=activations.device, dtype=activations.dtype)
                if m.ndim == 2:  # [B, F] -> [B, 1, ..., F] to broadcast over positions
                    if m.shape[0] != activations.shape[0]:
                        raise ValueError(
                            f"per-example neuron mask has {m.shape[0]} rows but the batch has "
                            f"{activations.shape[0]} examples"
                        )
                    m = m.view(m.shape[0], *([1] * (activations.ndim - 2)), m.shape[1])
                return activations * m

            return apply

        try:
            for index, mask in masks.items():
                handles.append(self.add_activation_hook(index, make(mask)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def zero_neurons_(self, index: int, neurons: Sequence[int] | torch.Tensor) -> int:
        """Permanently remove neurons of layer ``index`` by zeroing their out-projection rows.

        The MLP output is ``sum_j a_j * W_out[j, :] + b_out``: neuron j reaches the residual
        stream only through row j of the [F, D] out projection, so zeroing that row removes its
        contribution exactly, whatever the activation function, gating or input bias (zeroing the
        input column instead leaves ``act(b_in[j])``, which is nonzero for e.g. SiLU with bias).

        Args:
            index: layer index.
            neurons: neuron indices (ints or a LongTensor) or a bool mask [F] (True = remove).

        Returns:
            The number of weights that changed (entries that were nonzero).
        """
        width = self.layer(index).width
        idx = torch.as_tensor(neurons)
        if idx.dtype == torch.bool:
            if idx.shape != (width,):
                raise ValueError(
                    f"bool neuron mask must have shape [{width}], got {tuple(idx.shape)}"
                )
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).flatten().unique()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width):
            raise IndexError(f"neuron indices must be in [0, {width}) for layer {index}")
        rows = self.out_weight(index)  # [F, D]
        idx = idx.to(rows.device)
        changed = int((rows[idx] != 0).sum())
        rows[idx] = 0
        return changed
