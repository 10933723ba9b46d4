"""What a method edits: the layers it touches and the exact top-k of its scores, frugally.

Two pieces shared by the weight- and neuron-level methods so their buffers exist only where the
method edits (issue: memory-frugal methods at 7B scale):

* :class:`LayersConfig` gives every such method a ``layers`` option; :func:`edited_layers`
  resolves it against a model. Scores, masks, gradients and Fisher blocks are then allocated for
  the MLPs of those layers only, and everything else is frozen, so backward passes stop at the
  lowest edited layer.
* :func:`top_k_masks` picks the ``k`` largest entries over several score tensors without
  concatenating them (the old ``torch.cat`` + ``topk`` made a float32 copy of every MLP score at
  once: 17 GB for a 7B model's 4.3 B MLP weights). It bisects on the scores' own bit patterns, so
  it compares values in their own dtype (bfloat16 scores are ranked as bfloat16, exactly as their
  float32 casts would be) and breaks ties by position (the lowest flat index of the first tensor
  wins), a rule that does not depend on dtype, device or kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..mlp import MLPAdapter

logger = logging.getLogger(__name__)

_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}


@dataclass
class LayersConfig:
    """Base of the configs of methods that edit MLP layers (neuron and weight families)."""

    layers: tuple[int, ...] | None = None
    """MLP layers to edit, e.g. layers=2 or layers=0,5 (0-based); None = every layer (the paper).
    Scores, masks and optimizer state exist for these layers only, and ratio and the changed
    fraction count their weights or neurons."""

    def validate_layers(self) -> None:
        """Raise a clear error unless ``layers`` is None or distinct non-negative integers."""
        if self.layers is None:
            return
        layers = tuple(self.layers)
        if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ValueError(
                f"layers must be one or more layer indices (e.g. layers=0,3), got {self.layers!r}"
            )
        if min(layers) < 0 or len(set(layers)) != len(layers):
            raise ValueError(
                f"layers must be distinct indices >= 0 (e.g. layers=0,3), got {self.layers!r}"
            )


def edited_layers(adapter: MLPAdapter, layers: Sequence[int] | None) -> list[int]:
    """The sorted layer indices a method edits: ``layers``, or every layer when None.

    Raises:
        ValueError: an index the model does not have (the message names its layer count).
    """
    if layers is None:
        return list(range(adapter.n_layers))
    wrong = [i for i in layers if not 0 <= i < adapter.n_layers]
    if wrong:
        raise ValueError(
            f"layers={','.join(map(str, layers))} names layer(s) {wrong} but the model has "
            f"{adapter.n_layers} MLP layers (0..{adapter.n_layers - 1})"
        )
    return sorted(layers)


# --------------------------------------------------------------------------- top-k


def _key_to_value(key: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The float of ``dtype`` whose order key is ``key`` (see :func:`_value_to_key`), 0-dim."""
    int_dtype = _BITS[dtype]
    bits = key if key >= 0 else key ^ torch.iinfo(int_dtype).max
    return torch.tensor(bits, dtype=int_dtype, device=device).view(dtype)


def _value_to_key(value: float, dtype: torch.dtype) -> int:
    """An integer that orders like the float: the bit pattern, negatives' magnitude bits flipped."""
    int_dtype = _BITS[dtype]
    bits = int(torch.tensor(value, dtype=dtype).view(int_dtype))
    return bits if bits >= 0 else bits ^ torch.iinfo(int_dtype).max


def _count_at_least(scores: Sequence[torch.Tensor], value: torch.Tensor) -> int:
    return sum(int((s >= value.to(s.device)).sum()) for s in scores)


@torch.no_grad()
def top_k_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Bool masks (one per tensor, its shape) of the ``k`` largest entries over all ``scores``.

    Entries at ``-inf`` are never chosen (callers mark what must not be picked that way), so fewer
    than ``k`` come back when fewer are finite. Ties at the k-th value are broken by position: the
    earlier tensor, then the lower flat index, wins. The result equals a stable descending sort of
    the concatenated scores cut at ``k``, without building that concatenation: the k-th value is
    found by bisection on the dtype's ordered bit patterns (16, 32 or 64 counting passes), and the
    only buffers are one bool tensor of each matrix's size at a time plus the returned masks.

    Args:
        scores: tensors of one float dtype (float64, float32, bfloat16 or float16), any shapes and
            devices; NaN is not allowed.
        k: how many entries to choose.
    """
    if not scores:
        return []
    dtype = scores[0].dtype
    if dtype not in _BITS or any(s.dtype != dtype for s in scores):
        raise TypeError(
            f"top_k_masks needs scores of one float dtype, got {sorted({str(s.dtype) for s in scores})}"
        )
    finfo = torch.finfo(dtype)
    lowest = _key_to_value(_value_to_key(float(finfo.min), dtype), dtype, torch.device("cpu"))
    n_finite = _count_at_least(scores, lowest)  # everything but -inf (and NaN)
    if k <= 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    if k >= n_finite:
        return [s >= lowest.to(s.device) for s in scores]
    # Largest key t with count(score >= value(t)) >= k; the invariant holds at lo from the start.
    lo, hi = _value_to_key(float(finfo.min), dtype), _value_to_key(float("inf"), dtype)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count_at_least(scores, _key_to_value(mid, dtype, torch.device("cpu"))) >= k:
            lo = mid
        else:
            hi = mid - 1
    threshold = _key_to_value(lo, dtype, torch.device("cpu"))
    masks = [s > threshold.to(s.device) for s in scores]
    need = k - sum(int(m.sum()) for m in masks)
    for s, mask in zip(scores, masks, strict=True):
        if need <= 0:
            break
        ties = (s == threshold.to(s.device)).view(-1).nonzero().flatten()[:need]
        mask.view(-1)[ties] = True
        need -= len(ties)
    return masks


__all__ = ["LayersConfig", "edited_layers", "top_k_masks"]
