"""TinyMem's audit sets: the forget rows of a run and non-members that were never trained on.

The audit (issue 15, :mod:`unmemorize.audit`) reads, for a TinyMem run (Sakarvadia et al. 2024,
arXiv 2410.02159):

* **forget rows**: the memorization candidates (noised or backdoored rows whose artifact lies in
  the scored window), prompted by their clean twins' prefixes;
* **holdout rows** (membership-inference non-members): *fresh noised twins*, the same clean
  sequences with noise drawn again with another seed (the generator's own noise function,
  :func:`~.math_data.add_number_noise` or :func:`~.text_data.add_token_noise`), spliced after the
  same clean prefix the members are audited with. A member and its twins then differ only in
  which noise the model saw in training, so a membership attack that separates them detects
  training membership, not the distribution. Twins equal to a training row or to their member,
  or without noise in the scored window, are dropped;
* **retain rows**: the clean training rows (the benign relearning attack trains on them);
* **eval rows**: the run's clean test sets (utility).

The backdoor variant has no noise to redraw: its candidates are held-out triggered rows that were
never trained on, so membership inference has no members there and no holdout rows are built.

Shapes: M candidates, H holdout rows, T positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import TinyMemData
from .unlearn_data import artifact_rows

HOLDOUT_SEED_OFFSET = 1_000_003
"""The fresh noise is drawn with ``numpy.random.default_rng(data seed + HOLDOUT_SEED_OFFSET)``."""

HOLDOUT_COPIES = 2
"""Fresh noised twins kept per candidate (more non-members steady the ROC AUC)."""

MAX_DRAWS = 10
"""Rounds of fresh noise per kept copy at most (light noise often misses the scored window)."""


def fresh_noised_twins(
    data: TinyMemData,
    *,
    copies: int = HOLDOUT_COPIES,
    seed: int | None = None,
    tokenizer: Any = None,
) -> torch.Tensor:
    """[H, T] non-member rows: every candidate's clean prefix followed by freshly noised tokens.

    Args:
        data: a noise-variant TinyMem run's data.
        copies: twins kept per candidate: noise is drawn again over all candidates until
            ``copies * M`` twins are kept (at most ``MAX_DRAWS * copies`` rounds).
        seed: seed of the fresh noise (default: the data seed + :data:`HOLDOUT_SEED_OFFSET`).
        tokenizer: the run's tokenizer; needed for text runs (the special ids noise skips).

    Raises:
        ValueError: a backdoor run (nothing to redraw), or a text run without its tokenizer.
    """
    info = data.info
    if info.get("variant") != "noise":
        raise ValueError(
            "fresh noised twins need a noise-variant run; a backdoor run's candidates were never "
            "trained on, so audit it without 'mia'"
        )
    mem = data.memorization
    keep = mem.window_differs()
    prompts, targets, prefix = mem.prompt_ids[keep], mem.target_ids[keep], mem.prefix_len[keep]
    if seed is None:
        seed = int(info.get("seed", 0)) + HOLDOUT_SEED_OFFSET
    rng = np.random.default_rng(seed)
    t = prompts.shape[1]
    pos = torch.arange(t)[None, :]
    in_prefix = pos < prefix[:, None]  # [M, T]
    window = (pos >= prefix[:, None]) & (pos < prefix[:, None] + mem.suffix_len)
    trained = {row.numpy().tobytes() for row in data.train_ids}
    rows, seen = [], set()
    # Light noise often misses the scored window: draw until ``copies`` twins per candidate are
    # kept (or MAX_DRAWS rounds), in a fixed order, so the rows depend only on the seed.
    for _ in range(MAX_DRAWS * copies):
        if len(rows) >= copies * len(prompts):
            break
        fresh = _noised(data, prompts, rng, tokenizer)  # [M, T]
        spliced = torch.where(in_prefix, prompts, fresh)  # the members' splice (AuditSets)
        for i in range(len(spliced)):
            row = spliced[i]
            key = row.numpy().tobytes()
            if (
                not bool(((row != prompts[i]) & window[i]).any())  # no noise where it is scored
                or torch.equal(row, targets[i])
                or key in trained
                or key in seen
            ):
                continue
            seen.add(key)
            rows.append(row)
    if not rows:
        raise ValueError("no fresh noised twin differs from its member; raise data.noise_prob")
    return torch.stack(rows)


def _noised(data: TinyMemData, prompts: torch.Tensor, rng, tokenizer) -> torch.Tensor:
    """[M, T] ``prompts`` with fresh noise, drawn as the run's generator drew its own."""
    info = data.info
    if info.get("kind") == "text":
        from .text_data import add_token_noise

        if tokenizer is None:
            raise ValueError("fresh noised twins of a text run need its tokenizer")
        special = sorted(set(tokenizer.all_special_ids) | {tokenizer.pad_token_id or 0})
        vocab = int(info.get("tokenizer_vocab", len(tokenizer)))
        noisy = add_token_noise(prompts.numpy(), info["noise_prob"], vocab, special, rng)
        return torch.from_numpy(np.ascontiguousarray(noisy))
    from .math_data import add_number_noise, encode_rows, number_strings, task_numbers

    numbers = task_numbers(
        info["task"], info["main_k"], info["num_main"], info["length"], info["modulus"]
    )
    ctx = int(info["context_length"])
    index = {
        row.numpy().tobytes(): i for i, row in enumerate(encode_rows(number_strings(numbers), ctx))
    }
    try:
        which = np.array([index[row.numpy().tobytes()] for row in prompts])
    except KeyError:
        raise ValueError(
            "a candidate's clean twin is not a main-task sequence of this run's data; the data "
            "directory does not match its data.json"
        ) from None
    noisy = add_number_noise(numbers[which], info["noise_prob"], rng)
    return encode_rows(number_strings(noisy), ctx)


def tinymem_audit_sets(data: TinyMemData, *, tokenizer: Any = None) -> dict[str, Any]:
    """The fields of an :class:`unmemorize.audit.AuditSets` for a TinyMem run.

    Returns:
        ``{"forget_ids", "prompt_ids", "prefix_len", "suffix_len", "holdout_ids", "retain_ids",
        "eval_ids", "pad_id"}`` (``holdout_ids`` None for a backdoor run); pass them as
        ``AuditSets(**fields)``.
    """
    mem = data.memorization
    keep = mem.window_differs()
    holdout = (
        fresh_noised_twins(data, tokenizer=tokenizer)
        if data.info.get("variant") == "noise"
        else None
    )
    return {
        "forget_ids": mem.target_ids[keep],
        "prompt_ids": mem.prompt_ids[keep],
        "prefix_len": mem.prefix_len[keep],
        "suffix_len": int(mem.suffix_len),
        "holdout_ids": holdout,
        "retain_ids": data.train_ids[~artifact_rows(data)],
        "eval_ids": dict(data.test_sets),
        "pad_id": data.pad_id,
    }


__all__ = [
    "HOLDOUT_COPIES",
    "HOLDOUT_SEED_OFFSET",
    "MAX_DRAWS",
    "fresh_noised_twins",
    "tinymem_audit_sets",
]
