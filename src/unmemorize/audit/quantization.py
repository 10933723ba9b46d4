"""Quantization attack: does rounding the weights bring a forgotten sequence back?

Zhang et al. 2024 ("Catastrophic failure of LLM unlearning via quantization", arXiv 2410.16454):
unlearning with a small learning rate moves the weights so little that quantizing the edited
model lands on (nearly) the same grid points as quantizing the original, and the knowledge
returns. The attack is simulated in float32 on a copy (quantize, then dequantize), so it runs on
any device and measures what the rounding alone does:

* ``bfloat16`` / ``float16``: every floating-point parameter rounded to that format.
* ``int8`` / ``int4``: weight-only round-to-nearest (RTN), symmetric, per output channel, of
  every ``nn.Linear`` and GPT-2 ``Conv1D`` weight matrix except the output embedding (kept in
  high precision, as GPTQ / AWQ / bitsandbytes do by default). For output channel c with
  weights w_c: s_c = max|w_c| / q_max, ŵ = s_c · clamp(round(w / s_c), −q_max, q_max), with
  q_max = 127 (int8) or 7 (int4). GPT-2's ``Conv1D`` stores its weight [in, out], so an output
  channel is a column there and a row of an ``nn.Linear`` weight (:func:`unmemorize.mlp.in_out_view`
  gives the [in, out] view of both).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from ..mlp import in_out_view
from .base import AUDIT_CHECKS, AuditCheck, AuditContext, CheckResult
from .extraction import exact_verdicts

INT_LEVELS = {"int8": 127, "int4": 7}
"""q_max of each symmetric integer format."""


def rtn_quantize_(weight_in_out: torch.Tensor, q_max: int) -> None:
    """Round ``weight_in_out`` [in, out] in place to the symmetric per-column (per output
    channel) grid with levels −q_max … q_max; a column of zeros stays zero."""
    w = weight_in_out.detach()
    scale = w.abs().amax(dim=0, keepdim=True).float() / q_max  # [1, out]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (w.float() / safe).round().clamp(-q_max, q_max) * safe
    w.copy_(torch.where(scale > 0, q, torch.zeros_like(q)).to(w.dtype))


@torch.no_grad()
def quantized_copy(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """A copy of ``model`` with its weights rounded to ``dtype`` and stored back in the model's
    own dtype (simulated quantization; ``model`` is untouched)."""
    out = copy.deepcopy(model)
    if dtype in ("bfloat16", "float16"):
        target = getattr(torch, dtype)
        for param in out.parameters():
            if param.is_floating_point():
                param.copy_(param.to(target).to(param.dtype))
        return out
    if dtype not in INT_LEVELS:
        raise ValueError(
            f"unknown quantization dtype {dtype!r}; use one of bfloat16, float16, int8, int4"
        )
    head = out.get_output_embeddings()
    for module in out.modules():
        if module is head or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        rtn_quantize_(in_out_view(module), INT_LEVELS[dtype])
    return out


@AUDIT_CHECKS.register("quantization")
class QuantizationAttack(AuditCheck):
    """Quantization attack (Zhang et al. 2024, arXiv 2410.16454): re-measure exact extraction
    after rounding the weights to bfloat16, float16, int8 and int4 (RTN, per output channel).

    memorized_fraction[dtype] = (1/U) Σ_i memorized_i(Q_dtype(θ)); see the module docstring for Q.
    """

    name = "quantization"
    paper = (
        "Zhang et al. 2024, catastrophic failure of unlearning via quantization (arXiv 2410.16454)"
    )
    measures = "exact memorized fraction of the forget rows after rounding the weights"
    reading = (
        "should stay at the exact check's figure; a rise (typically at int4 / int8) means the "
        "edit was too small to survive rounding: the sequence was hidden, not removed"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        summary: dict = {}
        rows: dict[str, list] = {}
        for dtype in ctx.config.quant_dtypes:
            verdict = exact_verdicts(quantized_copy(ctx.model, dtype), ctx.sets, ctx.config)
            summary[dtype] = float(verdict.float().mean())
            rows[f"quantized_{dtype}"] = verdict.tolist()
        return CheckResult(summary, rows)
