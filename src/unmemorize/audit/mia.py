"""Membership inference: can a loss-based attack still tell forget rows from non-members?

Four scores per row (higher = "more likely a member"), from the target log-probabilities
log p(x_t) of one teacher-forced pass over the row's non-pad targets (n of them):

* ``loss`` (Yeom et al. 2018, arXiv 1709.01604): −L with L = −(1/n) Σ_t log p(x_t).
* ``zlib`` (Carlini et al. 2021, arXiv 2012.07805): −L / |zlib(x)|, the loss over the zlib-
  compressed length in bytes of the row's text. Token rows without a ``decode`` function have no
  text: the non-pad token ids are compressed as fixed-width little-endian integers (1 byte for a
  vocabulary of ≤ 256 ids, 2 for ≤ 65 536, else 4), which keeps the attack's idea (a row that
  compresses well is cheap to predict without having been memorized).
* ``min_k`` (Min-K% Prob, Shi et al. 2023, arXiv 2310.16789): the mean of the lowest
  ⌊k·n⌋ (at least 1) values of log p(x_t).
* ``min_k_plus_plus`` (Min-K%++, Zhang et al. 2024, arXiv 2404.02936): the same mean over
  z_t = (log p(x_t) − μ_t) / σ_t, with μ_t = E_{v∼p(·|x_<t)}[log p(v)] and
  σ_t² = E_{v∼p}[(log p(v))²] − μ_t² the mean and variance of the log-probability over the
  vocabulary at position t (a member sits at a local maximum of the likelihood).

Each attack is summarized by its ROC AUC of forget rows (members) against holdout rows
(non-members): AUC = P(s_member > s_non) + ½ P(s_member = s_non), the Mann–Whitney U statistic
over n₁·n₀ pairs. MUSE's PrivLeak (Shi et al. 2024, arXiv 2407.06460) compares it with a
reference model that never saw the forget rows: PrivLeak = (AUC_model − AUC_ref) / AUC_ref,
≈ 0 for a model as private as the reference, > 0 when it leaks membership, < 0 when it
over-unlearns (its forget rows now look *less* likely than non-members). MUSE computes it with
Min-K% Prob; ``privleak`` here is that one, ``privleak_per_attack`` gives the others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import torch

from ..mlp import ratio_count
from .base import AUDIT_CHECKS, AuditCheck, AuditConfig, AuditContext, AuditSets, CheckResult
from .extraction import ForwardStats, forward_stats

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
"""The attacks, in the order of ``audit.json``."""

PRIVLEAK_ATTACK = "min_k"
"""The attack MUSE computes PrivLeak with (Min-K% Prob)."""


def roc_auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """Exact ROC AUC of ``members`` (positives) against ``nonmembers``, ties counted as ½.

    AUC = (R₁ − n₁(n₁+1)/2) / (n₁ n₀), where R₁ is the sum of the members' ranks among all
    scores (tied scores share their average rank): the Mann–Whitney U statistic.

    Raises:
        ValueError: an empty side, or a NaN score.
    """
    pos, neg = [float(v) for v in members], [float(v) for v in nonmembers]
    if not pos or not neg:
        raise ValueError("ROC AUC needs at least one member and one non-member score")
    if any(math.isnan(v) for v in pos + neg):
        raise ValueError("a membership score is NaN; check the model's outputs for NaN")
    labelled = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg], key=lambda x: x[0])
    rank_sum = 0.0
    i = 0
    while i < len(labelled):
        j = i
        while j + 1 < len(labelled) and labelled[j + 1][0] == labelled[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1  # ranks are 1-based; ties share the mean
        rank_sum += average_rank * sum(label for _, label in labelled[i : j + 1])
        i = j + 1
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def _lowest_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """[N] mean of the lowest ⌊k·n_i⌋ (≥ 1) of row i's ``values`` [N, L] where ``mask``."""
    n = mask.sum(dim=1)  # [N]
    count = torch.tensor([max(1, ratio_count(int(c), k)) for c in n.tolist()])  # [N]
    ordered = values.masked_fill(~mask, float("inf")).sort(dim=1).values  # [N, L]
    take = torch.arange(values.shape[1])[None, :] < count[:, None]
    return torch.where(take, ordered, torch.zeros_like(ordered)).sum(1) / count


def _token_bytes(ids: list[int], vocab: int) -> bytes:
    width = 1 if vocab <= 256 else 2 if vocab <= 65536 else 4
    return b"".join(int(i).to_bytes(width, "little") for i in ids)


def zlib_lengths(
    ids: torch.Tensor,
    pad_id: int | None,
    decode: Callable[[list[int]], str] | None,
    vocab_size: int,
) -> torch.Tensor:
    """[N] zlib-compressed byte length of each row's non-pad tokens (text when ``decode``).

    Without ``decode`` the ids are written with the width ``vocab_size`` needs, the same for
    members and non-members.
    """
    out = []
    for row in ids.tolist():
        tokens = [t for t in row if pad_id is None or t != pad_id]
        data = (
            decode(tokens).encode("utf-8")
            if decode is not None
            else _token_bytes(tokens, vocab_size)
        )
        out.append(len(zlib.compress(data)))
    return torch.tensor(out, dtype=torch.float32)


def membership_scores(
    stats: ForwardStats,
    ids: torch.Tensor,
    pad_id: int | None,
    k: float,
    vocab_size: int,
    decode: Callable[[list[int]], str] | None = None,
) -> dict[str, torch.Tensor]:
    """``{attack: [N] scores}`` (higher = more likely a member) from one pass over ``ids``."""
    mask = stats.target_mask
    n = mask.sum(dim=1).clamp(min=1)
    loss = -(stats.token_logp * mask).sum(1) / n  # [N] mean NLL
    return {
        "loss": -loss,
        "zlib": -loss / zlib_lengths(ids, pad_id, decode, vocab_size),
        "min_k": _lowest_mean(stats.token_logp, mask, k),
        "min_k_plus_plus": _lowest_mean(stats.token_z, mask, k),
    }


def attack_aucs(members: dict[str, torch.Tensor], nonmembers: dict[str, torch.Tensor]) -> dict:
    return {
        name: roc_auc(members[name].tolist(), nonmembers[name].tolist()) for name in MIA_ATTACKS
    }


@AUDIT_CHECKS.register("mia")
class MembershipInference(AuditCheck):
    """Membership inference (LOSS, zlib, Min-K%, Min-K%++) as ROC AUC, and MUSE's PrivLeak.

    See the module docstring for each score's formula.
    """

    name = "mia"
    paper = (
        "Yeom et al. 2018 (LOSS); Carlini et al. 2021 (zlib, arXiv 2012.07805); Shi et al. 2023 "
        "(Min-K%, arXiv 2310.16789); Zhang et al. 2024 (Min-K%++, arXiv 2404.02936); MUSE, Shi "
        "et al. 2024 (PrivLeak, arXiv 2407.06460)"
    )
    measures = "whether forget rows still look like training members next to held-out non-members"
    reading = (
        "AUC 0.5 = indistinguishable (what a model that never saw them gives), near 1 = members "
        "stand out; privleak near 0 = as private as the reference, > 0 leaks, < 0 over-unlearned"
    )

    def check_inputs(self, sets: AuditSets, config: AuditConfig) -> None:
        if sets.holdout_ids is None or len(sets.holdout_ids) == 0:
            raise ValueError(
                "membership inference needs held-out non-member rows: pass holdout_ids "
                "(rows of the forget set's distribution never trained on), or drop 'mia' from "
                "checks"
            )

    def _scores(self, model, ctx: AuditContext, stats: ForwardStats | None = None):
        sets, cfg = ctx.sets, ctx.config
        forget = sets.audited_ids()
        if stats is None:
            stats = forward_stats(model, forget, sets.pad_id, cfg)
        holdout = forward_stats(model, sets.holdout_ids, sets.pad_id, cfg)
        vocab = model.get_input_embeddings().num_embeddings
        members = membership_scores(stats, forget, sets.pad_id, cfg.mia_k, vocab, sets.decode)
        nonmembers = membership_scores(
            holdout, sets.holdout_ids, sets.pad_id, cfg.mia_k, vocab, sets.decode
        )
        return members, nonmembers

    def run(self, ctx: AuditContext) -> CheckResult:
        members, nonmembers = self._scores(ctx.model, ctx, ctx.stats)
        auc = attack_aucs(members, nonmembers)
        summary: dict = {
            "auc": auc,
            "n_members": len(members["loss"]),
            "n_nonmembers": len(nonmembers["loss"]),
            "k": ctx.config.mia_k,
            "privleak": None,
        }
        if ctx.reference is not None:
            ref = attack_aucs(*self._scores(ctx.reference, ctx))
            leak = {name: (auc[name] - ref[name]) / ref[name] for name in MIA_ATTACKS}
            summary.update(
                privleak=leak[PRIVLEAK_ATTACK],
                privleak_attack=PRIVLEAK_ATTACK,
                privleak_per_attack=leak,
                reference_auc=ref,
            )
        rows = {f"mia_{name}": members[name].tolist() for name in MIA_ATTACKS}
        return CheckResult(summary, rows)
