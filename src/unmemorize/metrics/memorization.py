"""Exact-match memorization (TinyMem, Sakarvadia et al., arXiv 2410.02159, section 4.1).

A sequence counts as memorized when greedy decoding from its *clean* prefix of length p reproduces
the trained (noised / backdoored) suffix of length k exactly. Greedy decoding reproduces the suffix
iff, with the suffix fed back teacher-forced, the argmax is right at every suffix position: one
batched forward pass gives the verdict of ``generate`` without its k sequential steps.

Faster still, most sequences are not memorized: :func:`memorized` checks the suffix in chunks of
``check_every`` tokens, keeps a KV cache, and drops sequences at their first wrong chunk, and it
computes logits only at scored positions. Verdicts are identical to greedy generation (tested).

Shapes: M sequences, T positions, B batch, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..data.candidates import MemorizationSet
from ..distributed import run_sharded
from ..runtime import compiled, run_in_batches


def _as_prefix_tensor(prefix_len: int | torch.Tensor, m: int) -> torch.Tensor:
    if isinstance(prefix_len, int):
        return torch.full((m,), prefix_len, dtype=torch.long)
    return prefix_len.to(torch.long).cpu()


def _batches(rows: torch.Tensor, batch_size: int):
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


@torch.inference_mode()
def memorized(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    target_ids: torch.Tensor,
    prefix_len: int | torch.Tensor,
    suffix_len: int,
    *,
    batch_size: int = 512,
    check_every: int | None = 8,
) -> torch.Tensor:
    """Greedy-decoding exact-match verdicts, computed teacher-forced.

    Args:
        model: a causal LM (any HF family).
        prompt_ids: [M, T] sequences whose first ``prefix_len`` tokens are the prompt.
        target_ids: [M, T] sequences whose tokens ``[p, p + k)`` must be reproduced.
        prefix_len: p, one int or [M] per-row lengths.
        suffix_len: k; clipped to T − p per row.
        batch_size: rows per forward pass (halved automatically on out-of-memory).
        check_every: check the suffix in chunks of this many tokens and drop rows at their first
            wrong chunk (KV cache for the rest); None = one full pass per batch.

    Returns:
        [M] bool: True where greedy decoding from the prompt reproduces the target suffix.
    """
    m, t = target_ids.shape
    prefix = _as_prefix_tensor(prefix_len, m)
    device = next(model.parameters()).device
    forward = compiled(model)  # the model itself unless --compile
    verdict = torch.zeros(m, dtype=torch.bool)
    for p in prefix.unique().tolist():
        k = min(suffix_len, t - p)
        if p < 1 or k < 1:
            continue  # nothing to prompt with or nothing to reproduce: not memorized
        rows = (prefix == p).nonzero().squeeze(1)

        def check(start: int, stop: int, rows=rows, p=p, k=k) -> None:
            idx = rows[start:stop]
            seq = torch.cat([prompt_ids[idx, :p], target_ids[idx, p : p + k]], dim=1).to(device)
            verdict[idx] = _check_batch(forward, seq, p, k, check_every).cpu()

        # a batch too large for the device is halved and retried, not a crash
        run_in_batches(check, len(rows), batch_size, what="memorization batch")
    return verdict


def memorized_sharded(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    target_ids: torch.Tensor,
    prefix_len: int | torch.Tensor,
    suffix_len: int,
    **kwargs,
) -> torch.Tensor:
    """:func:`memorized` split over the processes of a multi-process launch.

    Under ``accelerate launch`` (or torchrun) with N processes, rank r judges rows ``r::N`` and
    the verdicts are merged into the [M] tensor in the original order on every rank. Verdicts
    are per row, so the result equals :func:`memorized`'s, which it is in one process.
    """
    m = len(target_ids)
    prefix = _as_prefix_tensor(prefix_len, m)

    def judge(rows: torch.Tensor) -> torch.Tensor:
        return memorized(
            model, prompt_ids[rows], target_ids[rows], prefix[rows], suffix_len, **kwargs
        )

    return run_sharded(judge, m, next(model.parameters()).device)


def _check_batch(model, seq: torch.Tensor, p: int, k: int, check_every: int | None) -> torch.Tensor:
    """[B] verdicts for ``seq`` = [B, p + k] (prompt then target suffix)."""
    b = seq.shape[0]
    step = k if check_every is None or check_every >= k else check_every
    bounds = list(range(0, k, step)) + [k]  # suffix offsets checked after each stage
    alive = torch.arange(b, device=seq.device)  # rows still matching, as indices into the batch
    ok_all = torch.zeros(b, dtype=torch.bool, device=seq.device)
    cache = None
    multi = len(bounds) > 2
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j], bounds[j + 1]
        if j == 0:
            inputs = seq[:, : p + hi - 1]  # logits at p-1 .. p+hi-2 predict suffix[0:hi]
            out = model(input_ids=inputs, use_cache=multi, logits_to_keep=hi)
        else:
            inputs = seq[alive, p + lo - 1 : p + hi - 1]
            out = model(input_ids=inputs, past_key_values=cache, use_cache=True)
        pred = out.logits.argmax(dim=-1)  # [B_alive, hi - lo]
        good = (pred == seq[alive, p + lo : p + hi]).all(dim=1)
        alive = alive[good]
        if len(alive) == 0:
            return ok_all
        cache = out.past_key_values
        if multi and not bool(good.all()) and j < len(bounds) - 2:
            cache.batch_select_indices(good.nonzero().squeeze(1))
    ok_all[alive] = True
    return ok_all


@torch.inference_mode()
def generate_memorized(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    target_ids: torch.Tensor,
    prefix_len: int | torch.Tensor,
    suffix_len: int,
    *,
    batch_size: int = 256,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memorization by real greedy decoding with ``generate`` (the reference path).

    Returns:
        ``(verdict, token_score)``, both [M]: exact match of the k generated tokens, and the
        fraction of the k generated tokens that equal the target (Pythia-style 32→32 score).
    """
    m, t = target_ids.shape
    prefix = _as_prefix_tensor(prefix_len, m)
    device = next(model.parameters()).device
    verdict = torch.zeros(m, dtype=torch.bool)
    score = torch.zeros(m)
    for p in prefix.unique().tolist():
        k = min(suffix_len, t - p)
        if p < 1 or k < 1:
            continue
        # Never stop early: the suffix may contain eos. (A GenerationConfig object would be merged
        # with the model's own, which brings its eos back; keyword arguments override it.)
        gen_kwargs = dict(
            max_new_tokens=k,
            min_new_tokens=None,
            do_sample=False,
            use_cache=use_cache,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id if model.config.pad_token_id is not None else 0,
        )
        rows = (prefix == p).nonzero().squeeze(1)
        for idx in _batches(rows, batch_size):
            prompt = prompt_ids[idx, :p].to(device)
            out = model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), **gen_kwargs
            )
            got = out[:, p : p + k].cpu()
            want = target_ids[idx, p : p + k]
            n = got.shape[1]
            match = got == want[:, :n]
            verdict[idx] = match.all(dim=1) & (n == k)
            score[idx] = match.sum(dim=1).float() / k
    return verdict, score


@dataclass
class MemorizationReport:
    """Per-sequence verdicts over a :class:`MemorizationSet` and their summaries.

    Attributes:
        memorized: [M] verdicts for every row.
        candidate: [M] rows that count: the target differs from the clean twin inside the window
            (elsewhere, reproducing the target is generalization, not memorization).
        group: [M] duplication group (trained on 10**group copies).
    """

    memorized: torch.Tensor
    candidate: torch.Tensor
    group: torch.Tensor

    @property
    def n_candidates(self) -> int:
        return int(self.candidate.sum())

    @property
    def n_memorized(self) -> int:
        return int((self.memorized & self.candidate).sum())

    @property
    def memorized_fraction(self) -> float:
        """Memorized candidates / candidates (0 when there are none)."""
        return self.n_memorized / self.n_candidates if self.n_candidates else 0.0

    def per_group(self) -> dict[str, float]:
        """Memorized fraction per duplication group, keyed by copy count ("1", "10", ...)."""
        out = {}
        for g in self.group[self.candidate].unique().tolist():
            sel = self.candidate & (self.group == g)
            out[str(10**g)] = float((self.memorized & sel).sum()) / float(sel.sum())
        return out

    def memorized_indices(self) -> torch.Tensor:
        """Row indices of the memorized candidates (the forget set of unlearning)."""
        return (self.memorized & self.candidate).nonzero().squeeze(1)

    def to_dict(self) -> dict:
        return {
            "memorized_fraction": self.memorized_fraction,
            "n_memorized": self.n_memorized,
            "n_candidates": self.n_candidates,
            "n_sequences": int(len(self.memorized)),
            "per_group": self.per_group(),
        }


def measure_memorization(
    model: PreTrainedModel, mem: MemorizationSet, **kwargs
) -> MemorizationReport:
    """Run :func:`memorized` over a memorization set (for backdoors: the attack success rate)."""
    verdict = memorized(
        model, mem.prompt_ids, mem.target_ids, mem.prefix_len, mem.suffix_len, **kwargs
    )
    return MemorizationReport(verdict, mem.window_differs(), mem.group)
