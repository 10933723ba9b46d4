"""The three TinyMem train-time regularizers.

The training loop drives a :class:`Regularizer` through these calls::

    reg = build_regularizer("spectral_norm", strength=0.01)
    reg.attach(model)                                   # once, before training
    for example_index, batch in loader:
        reg.set_batch(example_index)                    # [B] dataset indices, before forward
        per_seq = ...                                   # [B] mean token CE per sequence
        loss = reg.reduce(per_seq)                      # None -> per_seq.mean()
        penalty = reg.penalty(model)                    # None -> nothing to add
        ...
    reg.finalize(model)                                 # before saving: a plain HF model again

``state_dict`` / ``load_state_dict`` hold only tensors and plain Python values, so a checkpoint
can be read back with ``torch.load(path, weights_only=True)`` and training resumes exactly.

Vocabulary: B batch, T positions, D d_model, F MLP width, L layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .mlp import MLPAdapter, find_decoder_layers, in_out_view, ratio_count
from .registry import Registry, suggest

logger = logging.getLogger(__name__)

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


class Regularizer:
    """Base class: every hook is a no-op, so a subclass overrides only what it needs."""

    name: ClassVar[str] = "none"

    def attach(self, model: nn.Module) -> None:
        """Called once before training: install hooks, initialize state."""

    def detach(self) -> None:
        """Remove any hooks installed by :meth:`attach`."""

    def set_batch(self, example_index: torch.Tensor) -> None:
        """Receive the dataset indices [B] of the next batch, before its forward pass."""

    def reduce(self, per_sequence_loss: torch.Tensor) -> torch.Tensor | None:
        """Reduce per-sequence losses [B] to a scalar; None means the plain mean."""
        return None

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """A scalar added to the loss, or None."""
        return None

    def finalize(self, model: nn.Module) -> None:
        """Called on the trained model before it is saved (bake eval-time transforms)."""

    def state_dict(self) -> dict[str, Any]:
        """State for an exact resume: tensors and plain Python values only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def build_regularizer(name: str, **options: Any) -> Regularizer:
    """Build a registered regularizer by name.

    Args:
        name: ``"spectral_norm"``, ``"loss_truncation"`` or ``"example_tied_dropout"``.
        **options: fields of that regularizer's dataclass.

    Raises:
        ValueError: for an unknown name or option (the message suggests the nearest one).
    """
    cls = REGULARIZERS.get(name)
    valid = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    for key in options:
        if key not in valid:
            raise suggest(key, valid, f"option of regularizer {name!r}")
    return cls(**options)


# ---------------------------------------------------------------------------- spectral norm


@dataclass(frozen=True)
class _Matrix:
    """One matrix of the spectral penalty: a name and a getter returning a fresh 2-D view."""

    name: str
    get: Callable[[], torch.Tensor]


def _columns(module: nn.Module, start: int, stop: int) -> Callable[[], torch.Tensor]:
    return lambda: in_out_view(module)[:, start:stop]


def _rows(module: nn.Module, start: int, stop: int) -> Callable[[], torch.Tensor]:
    return lambda: in_out_view(module)[start:stop, :]


def _attention_matrices(
    block: nn.Module, names: dict[int, str], n_head: int, layer: int
) -> list[_Matrix]:
    """Per-head Q, K, V and output-projection chunks of one decoder layer's attention.

    All chunks are taken from the [in, out] view of each weight: Q/K/V heads are column blocks
    (output features), the output projection is split into row blocks (its input features, one
    per head).
    """
    attn = next(
        (getattr(block, a) for a in ("attn", "attention", "self_attn") if hasattr(block, a)), None
    )
    if attn is None:
        raise ValueError(
            f"decoder layer {layer} has no attention submodule (`attn`, `attention` or "
            "`self_attn`); the spectral norm penalty supports GPT-2, GPT-NeoX and Llama-family "
            "models"
        )

    def pname(module: nn.Module) -> str:
        return f"{names[id(module)]}.weight"

    def per_head_out(out: nn.Module, head_dim: int) -> list[_Matrix]:
        return [
            _Matrix(f"{pname(out)}[head{h}]", _rows(out, h * head_dim, (h + 1) * head_dim))
            for h in range(n_head)
        ]

    def head_dim_of(total: int, heads: int, what: str) -> int:
        if total % heads:
            raise ValueError(
                f"layer {layer}: {what} has {total} features, not divisible by {heads} heads "
                "(check config.num_attention_heads)"
            )
        return total // heads

    matrices: list[_Matrix] = []
    if hasattr(attn, "c_attn") and hasattr(attn, "c_proj"):  # GPT-2: [D, 3D] = [Q | K | V]
        d = in_out_view(attn.c_attn).shape[1] // 3
        hd = head_dim_of(d, n_head, "c_attn")
        for k, kind in enumerate("qkv"):
            for h in range(n_head):
                start = k * d + h * hd
                matrices.append(
                    _Matrix(
                        f"{pname(attn.c_attn)}[{kind}{h}]", _columns(attn.c_attn, start, start + hd)
                    )
                )
        matrices += per_head_out(attn.c_proj, hd)
    elif hasattr(attn, "query_key_value") and hasattr(attn, "dense"):
        # GPT-NeoX views the fused output as [..., n_head, 3 * head_dim]: per head, Q, K and V are
        # adjacent (interleaved by head), unlike GPT-2's [Q | K | V].
        qkv = attn.query_key_value
        hd = head_dim_of(in_out_view(qkv).shape[1] // 3, n_head, "query_key_value")
        for h in range(n_head):
            for k, kind in enumerate("qkv"):
                start = h * 3 * hd + k * hd
                matrices.append(
                    _Matrix(f"{pname(qkv)}[{kind}{h}]", _columns(qkv, start, start + hd))
                )
        matrices += per_head_out(attn.dense, hd)
    elif all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
        hd = head_dim_of(in_out_view(attn.q_proj).shape[1], n_head, "q_proj")
        for kind, proj in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
            heads = head_dim_of(in_out_view(proj).shape[1], hd, f"{kind}_proj (in head_dim units)")
            for h in range(heads):
                matrices.append(
                    _Matrix(f"{pname(proj)}[{kind}{h}]", _columns(proj, h * hd, (h + 1) * hd))
                )
        matrices += per_head_out(attn.o_proj, hd)
    elif hasattr(attn, "qkv_proj") and hasattr(attn, "o_proj"):  # Phi-3: [Q heads | K | V]
        hd = head_dim_of(in_out_view(attn.o_proj).shape[0], n_head, "o_proj input")
        q_width = n_head * hd
        kv_width = (in_out_view(attn.qkv_proj).shape[1] - q_width) // 2
        kv_heads = head_dim_of(kv_width, hd, "qkv_proj K/V part (in head_dim units)")
        offsets = (("q", 0, n_head), ("k", q_width, kv_heads), ("v", q_width + kv_width, kv_heads))
        for kind, base, heads in offsets:
            for h in range(heads):
                start = base + h * hd
                matrices.append(
                    _Matrix(
                        f"{pname(attn.qkv_proj)}[{kind}{h}]",
                        _columns(attn.qkv_proj, start, start + hd),
                    )
                )
        matrices += per_head_out(attn.o_proj, hd)
    else:
        children = ", ".join(n for n, _ in attn.named_children()) or "none"
        raise ValueError(
            f"unsupported attention layout in layer {layer} (children: {children}); supported: "
            "GPT-2 c_attn/c_proj, GPT-NeoX query_key_value/dense, Llama q/k/v/o_proj, "
            "Phi-3 qkv_proj/o_proj"
        )
    return matrices


@REGULARIZERS.register("spectral_norm")
@dataclass(eq=False)
class SpectralNormPenalty(Regularizer):
    """Spectral norm penalty on every attention head and MLP matrix.

    Yoshida & Miyato (2017), "Spectral Norm Regularization for Improving the Generalizability of
    Deep Learning". With σ(W) the largest singular value of matrix W::

        L = CE + (λ/2) · Σ_W σ(W)²     (form="squared", the paper's formula)
        L = CE + (λ/2) · Σ_W σ(W)      (form="sum", what the TinyMem code computed)

    The matrices are, in every layer: Q, K and V of each attention head (each its own matrix),
    the attention output projection split into one input-dimension chunk per head, and the MLP
    input and output matrices (gate and up separately for gated MLPs). Embeddings, norms, biases
    and the LM head are not penalized. The number of heads is read from
    ``config.num_attention_heads`` (TinyMem hard-coded 4).

    σ is estimated by power iteration with a persistent left singular vector u per matrix
    (initialized N(0, I) from ``seed``): each :meth:`penalty` call does one no-grad iteration
    ``v = normalize(Wᵀu)``, ``u = normalize(Wv)`` and returns the penalty with ``σ = uᵀWv``, which
    carries the gradient (∂σ/∂W = uvᵀ).

    Attributes:
        strength: λ, the penalty weight (TinyMem swept {0.001, 0.01, 0.1}).
        form: ``"squared"`` (Σσ², paper) or ``"sum"`` (Σσ, TinyMem code).
        seed: seed of the u initialization.
    """

    name: ClassVar[str] = "spectral_norm"

    strength: float = 0.01
    form: Literal["squared", "sum"] = "squared"
    seed: int = 0

    _matrices: list[_Matrix] = field(default_factory=list, init=False, repr=False)
    _u: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _last_sigmas: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.form not in ("squared", "sum"):
            raise ValueError(f"form must be 'squared' or 'sum', got {self.form!r}")
        if not self.strength >= 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")

    def attach(self, model: nn.Module) -> None:
        """Collect the matrices and initialize one u per matrix."""
        config = getattr(model, "config", None)
        n_head = getattr(config, "num_attention_heads", None)
        if not isinstance(n_head, int) or n_head < 1:
            raise ValueError(
                "spectral_norm needs `model.config.num_attention_heads` to split attention "
                "weights per head"
            )
        adapter = MLPAdapter(model)
        names = {id(m): n for n, m in model.named_modules()}
        matrices: list[_Matrix] = []
        for index, block in enumerate(find_decoder_layers(model)):
            matrices += _attention_matrices(block, names, n_head, index)
            layer = adapter.layer(index)
            in_names = (
                [f"{layer.in_weight_names[0]}[gate]", f"{layer.in_weight_names[0]}[up]"]
                if layer.fused_gate_up
                else list(layer.in_weight_names)
            )
            for k, in_name in enumerate(in_names):
                matrices.append(_Matrix(in_name, lambda i=index, k=k: adapter.in_weights(i)[k]))
            matrices.append(_Matrix(layer.out_weight_name, lambda i=index: adapter.out_weight(i)))
        self._matrices = matrices
        generator = torch.Generator().manual_seed(self.seed)
        self._u = {}
        for m in matrices:
            w = m.get()
            u = torch.randn(w.shape[0], generator=generator, dtype=torch.float32)
            self._u[m.name] = F.normalize(u, dim=0).to(w.device)
        logger.info("spectral_norm: %d matrices (%d heads per layer)", len(matrices), n_head)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    def detach(self) -> None:
        """Nothing is hooked; drop references to the model's weights."""
        self._matrices = []

    @property
    def matrix_names(self) -> list[str]:
        """Names of the penalized matrices, e.g. ``transformer.h.0.attn.c_attn.weight[k2]``."""
        return [m.name for m in self._matrices]

    def last_sigmas(self) -> dict[str, float]:
        """σ estimates of the last :meth:`penalty` call, by matrix name."""
        if self._last_sigmas is None:
            return {}
        values = self._last_sigmas.tolist()
        return dict(zip(self.matrix_names, values, strict=True))

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """One power iteration per matrix, then ``(λ/2)·Σσ²`` (or ``Σσ``) with gradient."""
        if not self._matrices:
            raise RuntimeError("spectral_norm: call attach(model) before penalty()")
        sigmas = []
        for m in self._matrices:
            w = m.get()
            w = w if w.dtype == torch.float32 else w.float()  # power iteration in fp32
            u = self._u[m.name].to(w.device)
            with torch.no_grad():
                v = F.normalize(w.T @ u, dim=0)
                u = F.normalize(w @ v, dim=0)
            self._u[m.name] = u
            sigmas.append(torch.dot(u, w @ v))
        sigma = torch.stack(sigmas)  # [number of matrices]
        self._last_sigmas = sigma.detach()
        total = (sigma * sigma).sum() if self.form == "squared" else sigma.sum()
        return 0.5 * self.strength * total

    def state_dict(self) -> dict[str, Any]:
        return {"u": {name: u.detach().cpu().clone() for name, u in self._u.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._matrices:  # not attached yet: apply on attach
            self._pending = state
            return
        saved = state.get("u")
        if not isinstance(saved, dict) or set(saved) != set(self._u):
            missing = sorted(set(self._u) - set(saved or {}))[:3]
            raise ValueError(
                "spectral_norm state does not match this model's matrices "
                f"(e.g. missing {missing}); was it saved for a different architecture?"
            )
        for name, u in saved.items():
            if u.shape != self._u[name].shape:
                raise ValueError(
                    f"spectral_norm state for {name!r} has shape {tuple(u.shape)}, expected "
                    f"{tuple(self._u[name].shape)}"
                )
            self._u[name] = u.to(device=self._u[name].device, dtype=torch.float32).clone()


# ---------------------------------------------------------------------------- loss truncation


@REGULARIZERS.register("loss_truncation")
@dataclass(eq=False)
class LossTruncation(Regularizer):
    """Drop the highest-loss sequences of each batch.

    Kang & Hashimoto (2020), "Improved Natural Language Generation via Loss Truncation". With
    ℓ_i the mean token cross-entropy of sequence i and c the (1 − drop_fraction) quantile of
    recent per-sequence losses::

        L = (1/B) · Σ_i 1[ℓ_i < c] · ℓ_i

    Dropped sequences still count in the denominator B, as in the original code.

    Bookkeeping, in order, on each :meth:`reduce` call: the batch's losses are appended to a ring
    buffer of the last ``buffer_size`` losses; until ``min_count`` losses have been seen in total,
    nothing is dropped (plain mean); the cutoff c is computed (linear-interpolated quantile of the
    buffer's filled part) the first time ``min_count`` is reached and again whenever at least
    ``recompute_every`` losses arrived since the last computation; then sequences with
    ``ℓ_i ≥ c`` are masked out.

    Attributes:
        drop_fraction: fraction of sequences to drop (paper sweep {0.01, 0.05, 0.1}).
        buffer_size: number of recent losses kept.
        min_count: losses to see before dropping starts; None means ``buffer_size``.
        recompute_every: recompute the cutoff after this many new losses.
    """

    name: ClassVar[str] = "loss_truncation"

    drop_fraction: float = 0.05
    buffer_size: int = 10_000
    min_count: int | None = None
    recompute_every: int = 10_000

    _buffer: torch.Tensor = field(init=False, repr=False)
    _seen: int = field(default=0, init=False, repr=False)
    _position: int = field(default=0, init=False, repr=False)
    _since_recompute: int = field(default=0, init=False, repr=False)
    _cutoff: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if self.buffer_size < 1 or self.recompute_every < 1:
            raise ValueError("buffer_size and recompute_every must be >= 1")
        if self.min_count is None:
            self.min_count = self.buffer_size
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        self._buffer = torch.zeros(self.buffer_size, dtype=torch.float64)

    @property
    def cutoff(self) -> float | None:
        """The current loss cutoff c, or None before ``min_count`` losses were seen."""
        return self._cutoff

    def _append(self, losses: torch.Tensor) -> None:
        losses = losses[-self.buffer_size :]  # only the newest can survive in the ring
        n = losses.numel()
        first = min(n, self.buffer_size - self._position)
        self._buffer[self._position : self._position + first] = losses[:first]
        self._buffer[: n - first] = losses[first:]
        self._position = (self._position + n) % self.buffer_size

    def reduce(self, per_sequence_loss: torch.Tensor) -> torch.Tensor:
        """Masked mean of the per-sequence losses [B] (plain mean during warm-up)."""
        if per_sequence_loss.ndim != 1:
            raise ValueError(
                f"loss_truncation needs per-sequence losses of shape [B], got "
                f"{tuple(per_sequence_loss.shape)}"
            )
        batch = per_sequence_loss.numel()
        self._append(per_sequence_loss.detach().to("cpu", torch.float64))
        self._seen += batch
        self._since_recompute += batch
        assert self.min_count is not None
        if self._seen < self.min_count:
            return per_sequence_loss.mean()
        if self._cutoff is None or self._since_recompute >= self.recompute_every:
            filled = self._buffer[: min(self._seen, self.buffer_size)]
            self._cutoff = float(torch.quantile(filled, 1.0 - self.drop_fraction))
            self._since_recompute = 0
            logger.debug("loss_truncation: cutoff %.6g after %d losses", self._cutoff, self._seen)
        keep = (per_sequence_loss.detach() < self._cutoff).to(per_sequence_loss.dtype)  # [B]
        return (keep * per_sequence_loss).mean()

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self._buffer.clone(),
            "seen": self._seen,
            "position": self._position,
            "since_recompute": self._since_recompute,
            "cutoff": self._cutoff,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffer = state["buffer"]
        if buffer.shape != (self.buffer_size,):
            raise ValueError(
                f"loss_truncation state has a buffer of {buffer.numel()} losses but buffer_size "
                f"is {self.buffer_size}"
            )
        self._buffer = buffer.to(torch.float64).clone()
        self._seen = int(state["seen"])
        self._position = int(state["position"])
        self._since_recompute = int(state["since_recompute"])
        self._cutoff = None if state["cutoff"] is None else float(state["cutoff"])


# ---------------------------------------------------------------------------- example-tied dropout


@REGULARIZERS.register("example_tied_dropout")
@dataclass(eq=False)
class ExampleTiedDropout(Regularizer):
    """Example-tied dropout on the MLP hidden units.

    Maini et al. (2023), "Can Neural Network Memorization Be Localized?". In every layer the
    first ``n_fixed = ⌊p_fixed·F⌋`` hidden units are "generalization" units, always kept; every
    other unit is kept for example i with probability ``p_mem``, by a Bernoulli draw seeded by
    ``(seed, i)``, so an example always sees the same units and its memorization is pushed into
    them. With a the activations [B, T, F] (the out-projection input) and m_i ∈ {0,1}^F::

        training:  a'[i, t, :] = a[i, t, :] ⊙ m_i                       (m_i broadcast over T)
        eval:      a'[:, :, j] = a[:, :, j] · (p_fixed + p_mem)/p_fixed  if j < n_fixed, else 0

    The loss is the ordinary CE of the masked model. Masks are computed per batch from the
    example indices (no table of all masks). The TinyMem code masked token positions instead of
    hidden units; this masks units, as in the paper. :meth:`finalize` bakes the eval transform
    into the out-projection weights and removes the hooks, so the saved model is a plain HF model.

    Attributes:
        p_fixed: fraction of units always kept.
        p_mem: keep probability of each other unit for an example.
        seed: seed of the per-example draws.
    """

    name: ClassVar[str] = "example_tied_dropout"

    p_fixed: float = 0.2
    p_mem: float = 0.1
    seed: int = 0

    _adapter: MLPAdapter | None = field(default=None, init=False, repr=False)
    _handles: list[RemovableHandle] = field(default_factory=list, init=False, repr=False)
    _batch_masks: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.p_fixed < 1.0:
            raise ValueError(f"p_fixed must be in (0, 1), got {self.p_fixed}")
        if not 0.0 <= self.p_mem <= 1.0:
            raise ValueError(f"p_mem must be in [0, 1], got {self.p_mem}")

    def _require_adapter(self) -> MLPAdapter:
        if self._adapter is None:
            raise RuntimeError("example_tied_dropout: call attach(model) first")
        return self._adapter

    def n_fixed(self, width: int) -> int:
        """Number of always-kept units in a layer of ``width`` units."""
        return ratio_count(width, self.p_fixed)

    def attach(self, model: nn.Module) -> None:
        """Install a mask hook on every layer's out-projection input."""
        if self._handles:
            raise RuntimeError("example_tied_dropout is already attached; call detach() first")
        adapter = MLPAdapter(model)
        width = adapter.width
        if self.n_fixed(width) < 1:
            raise ValueError(
                f"p_fixed={self.p_fixed} keeps no unit of the {width} MLP units; raise p_fixed"
            )
        self._adapter = adapter
        self._handles = [
            adapter.add_activation_hook(i, self._make_hook(i)) for i in range(adapter.n_layers)
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._batch_masks = None

    def masks(self, example_index: torch.Tensor) -> torch.Tensor:
        """Keep-masks of some examples.

        Args:
            example_index: dataset indices [B] (non-negative integers).

        Returns:
            Bool [B, L, F], True where a unit is kept.
        """
        adapter = self._require_adapter()
        index = torch.as_tensor(example_index).flatten()
        if index.is_floating_point() or (index.numel() and int(index.min()) < 0):
            raise ValueError("example indices must be non-negative integers")
        n_layers, width = adapter.n_layers, adapter.width
        n_fixed = self.n_fixed(width)
        result = torch.ones(index.numel(), n_layers, width, dtype=torch.bool)  # [B, L, F]
        for row, i in enumerate(index.tolist()):
            # A generator per (seed, example): the same example always draws the same mask,
            # whatever batch it is in, and nothing needs to be stored between batches.
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, i])))
            draw = rng.random((n_layers, width - n_fixed)) < self.p_mem
            result[row, :, n_fixed:] = torch.from_numpy(draw)
        return result

    def eval_scale(self) -> torch.Tensor:
        """The eval-time multiplier [F]: (p_fixed + p_mem)/p_fixed on fixed units, 0 elsewhere."""
        width = self._require_adapter().width
        scale = torch.zeros(width)
        scale[: self.n_fixed(width)] = (self.p_fixed + self.p_mem) / self.p_fixed
        return scale

    def set_batch(self, example_index: torch.Tensor) -> None:
        self._batch_masks = self.masks(example_index)

    def _make_hook(self, layer: int) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, activations: torch.Tensor) -> torch.Tensor:
            if not module.training:
                scale = self.eval_scale().to(activations.device, activations.dtype)
                return activations * scale
            if self._batch_masks is None:
                raise RuntimeError(
                    "example_tied_dropout: call set_batch(example_index) before each training "
                    "forward pass (or put the model in eval mode)"
                )
            if self._batch_masks.shape[0] != activations.shape[0]:
                raise RuntimeError(
                    f"example_tied_dropout: set_batch got {self._batch_masks.shape[0]} indices "
                    f"but the batch has {activations.shape[0]} examples"
                )
            mask = self._batch_masks[:, layer].to(activations.device, activations.dtype)  # [B, F]
            mask = mask.view(mask.shape[0], *([1] * (activations.ndim - 2)), mask.shape[1])
            return activations * mask  # [B, T, F]

        return hook

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        """Bake the eval transform into the out projections, then remove the hooks.

        Scaling row j of the [F, D] out projection by s_j equals scaling activation j by s_j, so
        the plain model then computes what the hooked model computes in eval mode.
        """
        adapter = self._require_adapter()
        if adapter.model is not model:
            raise ValueError("finalize(model) must get the model passed to attach()")
        for i in range(adapter.n_layers):
            rows = adapter.out_weight(i)  # [F, D]
            rows.mul_(self.eval_scale().to(rows.device, rows.dtype)[:, None])
        self.detach()
        self._adapter = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "p_fixed": self.p_fixed, "p_mem": self.p_mem}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state["seed"], state["p_fixed"], state["p_mem"])
        if saved != (self.seed, self.p_fixed, self.p_mem):
            raise ValueError(
                f"example_tied_dropout state has (seed, p_fixed, p_mem) = {saved} but this "
                f"regularizer has {(self.seed, self.p_fixed, self.p_mem)}; masks would differ"
            )
