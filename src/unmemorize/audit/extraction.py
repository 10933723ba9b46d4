"""The one forward pass, and the extraction checks it serves: exact, partial, sampled.

One teacher-forced pass over the audited sequences (clean prefix + forget suffix) gives, at every
suffix position j of row i (the logits at position ``p_i + j - 1`` predict suffix token j):

* the greedy hit ``argmax = target``: greedy decoding reproduces the first m suffix tokens iff the
  first m hits are all true (before the first miss teacher forcing *is* greedy decoding), so the
  exact verdict is "every hit true", the verdict of :func:`unmemorize.metrics.memorization.memorized`;
* the log-probability of the target under the chosen decoding (temperature, top-k, top-p), whose
  sum over the suffix is the exact log-probability that one sample reproduces the suffix;
* the target log-probabilities and Min-K%++ statistics over the whole row, read by the
  membership-inference check (:mod:`unmemorize.audit.mia`).

Shapes: N rows, B batch, T positions, K suffix length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..metrics.losses import next_token_logits
from ..runtime import run_in_batches
from .base import AUDIT_CHECKS, AuditCheck, AuditConfig, AuditContext, AuditSets, CheckResult


@dataclass
class ForwardStats:
    """Per-token figures of one teacher-forced pass over N rows.

    Attributes:
        token_logp: [N, T-1] float32 log p(x_t+1 | x_≤t) of every target.
        token_z: [N, T-1] Min-K%++ z-score of every target (see :mod:`unmemorize.audit.mia`).
        target_mask: [N, T-1] bool, True where the target is not padding.
        hits: [N, K] bool, greedy argmax equals the suffix token (teacher-forced); None without a
            suffix.
        sample_logq: [N, K] log-probability of the suffix token under the decoding (−inf where
            top-k / top-p drop it); None without a suffix.
        suffix_mask: [N, K] bool, True where suffix position j exists for the row (j < k_i).
        row_ok: [N] bool, the row has a prefix (p ≥ 1) and a suffix (k_i ≥ 1) to test.
    """

    token_logp: torch.Tensor
    token_z: torch.Tensor
    target_mask: torch.Tensor
    hits: torch.Tensor | None = None
    sample_logq: torch.Tensor | None = None
    suffix_mask: torch.Tensor | None = None
    row_ok: torch.Tensor | None = None

    # ----------------------------------------------------------------- exact and partial figures

    def exact(self) -> torch.Tensor:
        """[N] bool: greedy decoding from the clean prefix reproduces the whole suffix."""
        return self.row_ok & (self.hits | ~self.suffix_mask).all(dim=1)

    def suffix_lengths(self) -> torch.Tensor:
        """[N] k_i = min(K, T − p_i) (0 for rows without a prefix)."""
        return self.suffix_mask.sum(dim=1)

    def token_match_fraction(self) -> torch.Tensor:
        """[N] fraction of suffix tokens whose teacher-forced argmax is right."""
        k = self.suffix_lengths().clamp(min=1)
        return (self.hits & self.suffix_mask).sum(dim=1).float() / k

    def longest_prefix(self) -> torch.Tensor:
        """[N] length of the longest suffix prefix greedy decoding reproduces."""
        ok = (self.hits & self.suffix_mask).long()
        return ok.cumprod(dim=1).sum(dim=1)

    def min_context(self) -> torch.Tensor:
        """[N] k*: the fewest suffix tokens to give teacher-forced so the rest is greedy-right
        (one past the last miss; 0 when there is none, k_i when even the last token misses)."""
        k = self.suffix_mask.shape[1]
        miss = ~self.hits & self.suffix_mask  # [N, K]
        pos = torch.arange(1, k + 1).expand_as(miss)
        return torch.where(miss, pos, torch.zeros_like(pos)).max(dim=1).values


def decoding_log_probs(logits: torch.Tensor, config: AuditConfig) -> torch.Tensor:
    """[..., V] log-probabilities of the sampling distribution, Hugging Face's order of warpers.

    q = softmax(z / τ) restricted to the top-k tokens (ties with the k-th kept) and then to the
    smallest most-likely set whose mass reaches top-p (the token that crosses the threshold kept),
    renormalised; tokens outside the set get −inf. Equal to what ``generate(do_sample=True,
    temperature=τ, top_k=k, top_p=p)`` samples from (tested against it).
    """
    z = logits.float() / config.temperature
    v = z.shape[-1]
    if 0 < config.top_k < v:
        kth = torch.topk(z, config.top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=False)
        cum = sorted_z.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= (1 - config.top_p)
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return F.log_softmax(z, dim=-1)


@torch.inference_mode()
def forward_stats(
    model: PreTrainedModel,
    ids: torch.Tensor,
    pad_id: int | None,
    config: AuditConfig,
    *,
    prefix_len: torch.Tensor | None = None,
    suffix_len: int | None = None,
) -> ForwardStats:
    """One teacher-forced pass of ``model`` over ``ids`` [N, T], in batches.

    Args:
        prefix_len: [N] prompt lengths; with ``suffix_len`` also computes the suffix figures.
        suffix_len: K.
    """
    n, t = ids.shape
    device = next(model.parameters()).device
    with_suffix = prefix_len is not None and suffix_len is not None
    if with_suffix:
        k = int(suffix_len)
        offsets = torch.arange(k)[None, :]  # [1, K]
        k_row = (t - prefix_len).clamp(min=0, max=k)  # [N]
        suffix_mask = (offsets < k_row[:, None]) & (prefix_len[:, None] >= 1)  # [N, K]
        row_ok = (prefix_len >= 1) & (k_row >= 1)
        # logits at position p - 1 + j predict suffix token j (at position p + j)
        pos = (prefix_len[:, None] - 1 + offsets).clamp(min=0, max=t - 2)  # [N, K]

    def batch(start: int, stop: int) -> dict[str, torch.Tensor]:
        x = ids[start:stop].to(device)  # [B, T]
        logits = next_token_logits(model, x).float()  # [B, T-1, V]
        logp = F.log_softmax(logits, dim=-1)  # [B, T-1, V]
        targets = x[:, 1:]  # [B, T-1]
        out = {"token_logp": logp.gather(-1, targets[..., None]).squeeze(-1)}
        probs = logp.exp()
        mu = (probs * logp).sum(-1)  # [B, T-1] E_p[log p]
        var = (probs * logp.square()).sum(-1) - mu.square()
        out["token_z"] = (out["token_logp"] - mu) / var.clamp(min=1e-12).sqrt()
        if with_suffix:
            where = pos[start:stop].to(device)  # [B, K]
            suffix_logits = logits.gather(
                1, where[..., None].expand(-1, -1, logits.shape[-1])
            )  # [B, K, V]
            suffix_tokens = x.gather(1, where + 1)  # [B, K]
            out["hits"] = suffix_logits.argmax(-1) == suffix_tokens
            logq = decoding_log_probs(suffix_logits, config)
            out["sample_logq"] = logq.gather(-1, suffix_tokens[..., None]).squeeze(-1)
        return {name: value.cpu() for name, value in out.items()}

    was_training = model.training
    model.eval()
    try:
        parts = run_in_batches(batch, n, config.batch_size, what="audit batch")
    finally:
        model.train(was_training)
    cat = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    targets = ids[:, 1:]
    target_mask = (
        torch.ones_like(targets, dtype=torch.bool) if pad_id is None else targets != pad_id
    )
    stats = ForwardStats(cat["token_logp"], cat["token_z"], target_mask)
    if with_suffix:
        stats.hits = cat["hits"]
        stats.sample_logq = cat["sample_logq"]
        stats.suffix_mask = suffix_mask
        stats.row_ok = row_ok
    return stats


def exact_verdicts(
    model: PreTrainedModel, sets: AuditSets, config: AuditConfig, index: torch.Tensor | None = None
) -> torch.Tensor:
    """[U] (or [len(index)]) greedy exact-match verdicts of the rows ``index``.

    The attacks (relearning, quantization) re-measure with it. One teacher-forced pass
    (:func:`forward_stats`) instead of autoregressive generation: greedy decoding reproduces the
    suffix iff every teacher-forced argmax hits (before the first miss the two are the same
    computation), the verdict of :func:`unmemorize.metrics.memorization.memorized` at a fraction
    of its cost (the relearning curve measures 8 times per learning rate).
    """
    if index is None:
        index = torch.arange(sets.n_forget)
    prompts, targets, prefix = sets.subset(index)
    pos = torch.arange(targets.shape[1])[None, :]  # [1, T]
    ids = torch.where(pos < prefix[:, None], prompts, targets)  # [n, T] clean prefix + suffix
    stats = forward_stats(
        model, ids, sets.pad_id, config, prefix_len=prefix, suffix_len=sets.suffix_len
    )
    return stats.exact()


def _fraction(mask: torch.Tensor) -> float:
    return float(mask.float().mean()) if len(mask) else 0.0


@AUDIT_CHECKS.register("exact")
class ExactExtraction(AuditCheck):
    """Exact extraction: does greedy decoding from the clean prefix reproduce the suffix?

    TinyMem (Sakarvadia et al. 2024, arXiv 2410.02159, section 4.1) and Carlini et al. 2023
    ("Quantifying memorization across neural language models", arXiv 2202.07646):
    memorized_i = 1[greedy(prompt_i[:p_i]) = forget_i[p_i : p_i + k_i]], computed teacher-forced
    as ∏_j 1[argmax q(· | x_<p+j) = x_p+j] (identical to greedy generation).
    """

    name = "exact"
    paper = "TinyMem (arXiv 2410.02159); Carlini et al. 2023 (arXiv 2202.07646)"
    measures = "share of forget rows whose suffix greedy decoding from the clean prefix reproduces"
    reading = (
        "0 is what removal claims; alone it is weak evidence: read it with the sampled, relearn "
        "and quantization checks, which catch a hidden rather than removed sequence"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        verdict = ctx.stats.exact()
        summary = {
            "memorized_fraction": _fraction(verdict),
            "n_memorized": int(verdict.sum()),
            "n_sequences": len(verdict),
        }
        if ctx.original is not None:
            summary["original_memorized_fraction"] = _fraction(ctx.original_memorized)
        return CheckResult(summary, {"exact": verdict.tolist()})


@AUDIT_CHECKS.register("partial")
class PartialExtraction(AuditCheck):
    """Partial extraction: how much of the suffix still comes out.

    Per row i with suffix length k_i and teacher-forced greedy hits h_ij = 1[argmax = x_p+j]:

    * ``token_match_fraction`` = Σ_j h_ij / k_i, the memorization score of Biderman et al. 2023
      (Pythia, arXiv 2304.11158), here teacher-forced (after a miss the prefix stays the true
      one, so it may exceed the score of free greedy generation);
    * ``longest_prefix`` m_i = max{m : h_i1 … h_im all true}: what greedy generation reproduces
      verbatim before it first diverges; ``longest_prefix_fraction`` = m_i / k_i;
    * ``extraction_strength`` ES_i = 1 − k*_i / k_i (Carlini et al. 2021, arXiv 2012.07805, as
      defined by Wang et al. 2024, arXiv 2406.09179): k*_i is the fewest leading suffix tokens
      that must be given for greedy decoding to complete the rest; 1 = extractable from the
      prefix alone, 0 = not even the last token comes out.
    """

    name = "partial"
    paper = (
        "Biderman et al. 2023 (arXiv 2304.11158); Carlini et al. 2021 (arXiv 2012.07805); "
        "Wang et al. 2024 (arXiv 2406.09179)"
    )
    measures = "how much of each forget suffix greedy decoding still reproduces"
    reading = (
        "means over forget rows; near 0 = little is left, a high token_match_fraction with exact "
        "0 = the sequence is one or two tokens away from coming back"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        s = ctx.stats
        k = s.suffix_lengths().clamp(min=1).float()
        match = s.token_match_fraction()
        longest = s.longest_prefix()
        strength = torch.where(s.row_ok, 1.0 - s.min_context().float() / k, torch.zeros_like(k))
        summary = {
            "token_match_fraction": float(match.mean()),
            "longest_prefix": float(longest.float().mean()),
            "longest_prefix_fraction": float((longest.float() / k).mean()),
            "extraction_strength": float(strength.mean()),
        }
        rows = {
            "token_match_fraction": match.tolist(),
            "longest_prefix": longest.tolist(),
            "extraction_strength": strength.tolist(),
        }
        return CheckResult(summary, rows)


def within_n(p: torch.Tensor, n: int) -> torch.Tensor:
    """1 − (1 − p)^n, computed as −expm1(n · log1p(−p)) (exact for tiny p)."""
    return -torch.expm1(n * torch.log1p(-p.double().clamp(max=1.0))).float()


@AUDIT_CHECKS.register("sampled")
class SampledExtraction(AuditCheck):
    """Sampled (probabilistic) extraction, Hayes et al. 2025 (arXiv 2410.19482).

    For row i, the exact probability that one sample from the clean prefix reproduces the suffix,
    from the teacher-forced pass: p_i = ∏_j q(x_p+j | x_<p+j), where q is the decoding
    distribution (softmax(z / τ), restricted to the top-k / top-p set and renormalised; 0 when the
    target falls outside it). Within n independent samples: P_i(n) = 1 − (1 − p_i)^n. A row is
    (n, p)-discoverable when P_i(n) ≥ p.
    """

    name = "sampled"
    paper = "Hayes et al. 2025, probabilistic extraction (arXiv 2410.19482)"
    measures = "probability that sampling from the clean prefix reproduces each forget suffix"
    reading = (
        "discoverable_fraction is the share an adversary drawing n samples per prefix extracts "
        "with probability >= discoverable_prob; a model that passes exact but not this one only "
        "suppressed the greedy path"
    )

    def run(self, ctx: AuditContext) -> CheckResult:
        s, cfg = ctx.stats, ctx.config
        logp = torch.where(s.suffix_mask, s.sample_logq, torch.zeros_like(s.sample_logq)).sum(1)
        p = torch.where(s.row_ok, logp.exp(), torch.zeros_like(logp))
        p_n = within_n(p, cfg.n_samples)
        discoverable = p_n >= cfg.discoverable_prob
        summary = {
            "p_extract_mean": float(p.mean()),
            "p_extract_max": float(p.max()),
            "p_within_n_mean": float(p_n.mean()),
            "discoverable_fraction": _fraction(discoverable),
            "n": cfg.n_samples,
            "discoverable_prob": cfg.discoverable_prob,
            "decoding": {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p},
        }
        rows = {
            "p_extract": p.tolist(),
            "p_within_n": p_n.tolist(),
            "discoverable": discoverable.tolist(),
        }
        return CheckResult(summary, rows)
