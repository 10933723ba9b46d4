"""Memorization candidates: a clean prompt and the sequence a model may have memorized.

Shapes: M candidates, T positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemorizationSet:
    """Sequences to test for memorization.

    The model is prompted with the first ``prefix_len[i]`` tokens of ``prompt_ids[i]`` (the *clean*
    sequence) and must reproduce ``target_ids[i]`` (the noised or backdoored sequence it was trained
    on) at positions ``[prefix_len[i], prefix_len[i] + suffix_len)``, clipped to T.

    Attributes:
        target_ids: [M, T] what memorization reproduces (noised / backdoored rows).
        prompt_ids: [M, T] the clean twins whose prefixes prompt the model.
        prefix_len: [M] prompt length of each row.
        suffix_len: number of tokens that must match (k).
        group: [M] duplication group g (the row was trained on 10**g times); 0 without duplication.
    """

    target_ids: torch.Tensor
    prompt_ids: torch.Tensor
    prefix_len: torch.Tensor
    suffix_len: int
    group: torch.Tensor

    def __post_init__(self) -> None:
        m = self.target_ids.shape[0]
        if self.prompt_ids.shape != self.target_ids.shape:
            raise ValueError("prompt_ids and target_ids must have the same shape")
        if self.prefix_len.shape != (m,) or self.group.shape != (m,):
            raise ValueError("prefix_len and group must have one entry per row")

    def __len__(self) -> int:
        return self.target_ids.shape[0]

    def window_differs(self) -> torch.Tensor:
        """[M] bool: the target differs from the clean twin inside the scored window.

        Only these rows are memorization *candidates*: elsewhere reproducing the target is plain
        generalization, not memorization.
        """
        t = self.target_ids.shape[1]
        pos = torch.arange(t)[None, :]  # [1, T]
        start = self.prefix_len[:, None]
        in_window = (pos >= start) & (pos < start + self.suffix_len)  # [M, T]
        return ((self.target_ids != self.prompt_ids) & in_window).any(dim=1)

    def subset(self, index: torch.Tensor) -> MemorizationSet:
        return MemorizationSet(
            self.target_ids[index],
            self.prompt_ids[index],
            self.prefix_len[index],
            self.suffix_len,
            self.group[index],
        )
