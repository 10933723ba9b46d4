"""The TinyMem dataset container (training rows, test sets, memorization candidates).

Shapes: N training rows, M memorization candidates, T positions (the context length).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...data.candidates import MemorizationSet
from ...io import atomic_dir, read_json


@dataclass
class TinyMemData:
    """A TinyMem training set, its test sets and its memorization candidates.

    Attributes:
        train_ids: [N, T] the unique training rows (noised rows included).
        train_copies: [N] how often each row is seen per epoch (duplication groups).
        test_sets: name -> [n, T] clean held-out rows (one per math task, or "text").
        memorization: the memorization candidates (noised or backdoored rows and clean twins).
        pad_id: the padding id, excluded from the loss, accuracy and perplexity; None = no padding.
        info: a JSON-able description (task, variant, trigger, sizes, seed, ...).
        poison_clean_ids: [P, T] backdoor runs: the clean twin of each poisoned TRAINING row (the
            first P rows of ``train_ids``, same order), what the clean fine-tuning recipe trains on
            (the held-out triggered rows of ``memorization`` measure the attack and must never be
            trained on); None for noise runs (their twins are ``memorization.prompt_ids``) and for
            backdoor runs written before this field existed.
    """

    train_ids: torch.Tensor
    train_copies: torch.Tensor
    test_sets: dict[str, torch.Tensor]
    memorization: MemorizationSet
    pad_id: int | None
    info: dict = field(default_factory=dict)
    poison_clean_ids: torch.Tensor | None = None

    @property
    def context_length(self) -> int:
        return self.train_ids.shape[1]

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """A shuffled list of row indices for one epoch, each row repeated ``train_copies`` times."""
        rows = torch.repeat_interleave(torch.arange(len(self.train_ids)), self.train_copies)
        return rows[torch.randperm(len(rows), generator=generator)]

    def save(self, directory: str | Path) -> None:
        """Write ``data.safetensors`` + ``data.json`` into ``directory`` (atomically)."""
        tensors = {
            "train_ids": self.train_ids,
            "train_copies": self.train_copies,
            "mem.target_ids": self.memorization.target_ids,
            "mem.prompt_ids": self.memorization.prompt_ids,
            "mem.prefix_len": self.memorization.prefix_len,
            "mem.group": self.memorization.group,
        }
        tensors.update({f"test.{k}": v for k, v in self.test_sets.items()})
        if self.poison_clean_ids is not None:
            tensors["poison_clean_ids"] = self.poison_clean_ids
        meta = {
            "pad_id": self.pad_id,
            "suffix_len": self.memorization.suffix_len,
            "test_sets": list(self.test_sets),
            "info": self.info,
        }
        with atomic_dir(directory) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()}, str(tmp / "data.safetensors")
            )
            (tmp / "data.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> TinyMemData:
        directory = Path(directory)
        if not (directory / "data.safetensors").is_file():
            raise FileNotFoundError(f"{directory} holds no TinyMem data (data.safetensors missing)")
        t = load_file(str(directory / "data.safetensors"))
        meta = read_json(directory / "data.json")
        mem = MemorizationSet(
            t["mem.target_ids"],
            t["mem.prompt_ids"],
            t["mem.prefix_len"],
            meta["suffix_len"],
            t["mem.group"],
        )
        tests = {k: t[f"test.{k}"] for k in meta["test_sets"]}
        return cls(
            t["train_ids"],
            t["train_copies"],
            tests,
            mem,
            meta["pad_id"],
            meta["info"],
            poison_clean_ids=t.get("poison_clean_ids"),
        )


def duplication_groups(n: int, powers: tuple[int, ...], rng) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``n`` rows at random into ``len(powers)`` equal groups; group g is seen 10**powers[g] times.

    Args:
        n: number of rows (e.g. the noised sequences).
        powers: the exponents, e.g. (0, 1, 2, 3) for 1, 10, 100 and 1000 copies. Empty = no duplication.
        rng: a ``numpy.random.Generator``.

    Returns:
        ``(group, copies)``, both [n] int64: the group exponent and the copy count of each row.
    """
    if not powers:
        return torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    order = rng.permutation(n)
    group = torch.empty(n, dtype=torch.long)
    for g, chunk in enumerate(_split_evenly(order, len(powers))):
        group[torch.as_tensor(chunk, dtype=torch.long)] = powers[g]
    return group, 10**group


def _split_evenly(items, parts: int) -> list:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out
