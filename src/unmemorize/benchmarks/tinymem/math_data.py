"""TinyMem arithmetic sequences (Sakarvadia et al., arXiv 2410.02159, section 3).

A sequence for start index i is ``f(i), f(f(i)), ...`` (``length`` numbers), written as
``"^a b c ...$"`` one character per token and right-padded to the context length. Tasks:

* ``increment``: f(x) = x + k;
* ``mult``: f(x) = k·x mod 20134.

The main task (k = 7) carries the memorization artifact: ``num_noise`` of its training rows get
independent ±1 noise on each number (probability ``noise_prob / 2`` each way), and the clean twin
of every noised row is kept to prompt the model. The backdoor variant instead overwrites
everything after a trigger number with the digit ``2``.

Fixed relative to the original code: noise rows are drawn from the real training rows (not a
hard-coded range), noise never makes a number negative, and a backdoor trigger must lie inside one
number (the original matched across number boundaries).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ...data.candidates import MemorizationSet
from ...data.tokenizers import MATH_PAD_ID, MATH_VOCAB
from ...registry import suggest
from .data import TinyMemData, duplication_groups

TASKS = ("increment", "mult")
VARIANTS = ("noise", "backdoor")
BACKDOOR_FILL_ID = MATH_VOCAB["2"]


@dataclass
class MathDataConfig:
    """How to build a TinyMem math dataset (defaults: the paper's sizes)."""

    task: str = "increment"
    """``increment`` (x + k) or ``mult`` (k·x mod ``modulus``)."""
    main_k: int = 7
    """k of the main task, the one that carries noise or backdoors."""
    extra_ks: tuple[int, ...] = (2, 3, 4, 5)
    """k of the auxiliary tasks (clean data only)."""
    num_main: int = 20000
    """Sequences generated for the main task (train + test)."""
    num_extra: int = 3000
    """Sequences generated for each auxiliary task (train + test)."""
    num_test: int = 1000
    """Held-out rows per task."""
    num_noise: int = 1000
    """Main-task training rows that get noise (noise variant)."""
    length: int = 20
    """Numbers per sequence."""
    context_length: int = 150
    """Tokens per row: longer sequences are cut, shorter ones padded."""
    noise_prob: float = 0.1
    """Probability that a number is perturbed (half −1, half +1)."""
    modulus: int = 20134
    """Modulus of the ``mult`` task."""
    variant: str = "noise"
    """``noise`` (memorize noised rows) or ``backdoor`` (trigger -> fill)."""
    duplicate_powers: tuple[int, ...] = ()
    """Noised rows are split into groups seen 10**p times per epoch; empty = once each."""
    prefix_len: int = 50
    """Clean-prefix length of the memorization test (noise variant)."""
    suffix_len: int = 50
    """Tokens that must be reproduced exactly."""
    backdoor_fraction_test: float = 0.1
    """Share of triggered rows held out to measure the attack success rate."""
    seed: int = 0
    """Seeds data generation and splits (and the backdoor trigger, 100 + seed)."""

    def validate(self) -> None:
        if self.task not in TASKS:
            raise suggest(self.task, TASKS, "task")
        if self.variant not in VARIANTS:
            raise suggest(self.variant, VARIANTS, "variant")
        if self.main_k in self.extra_ks or len(set(self.extra_ks)) != len(self.extra_ks):
            raise ValueError(
                f"extra_ks {self.extra_ks} must be distinct and must not contain main_k ({self.main_k})"
            )
        if self.num_test >= self.num_main:
            raise ValueError("num_test must be smaller than num_main")
        if self.variant == "noise" and self.num_noise > self.num_main - self.num_test:
            raise ValueError("num_noise is larger than the main task's training split")
        if not 0 <= self.noise_prob <= 1:
            raise ValueError("noise_prob must lie in [0, 1]")
        if self.prefix_len < 1 or self.suffix_len < 1:
            raise ValueError("prefix_len and suffix_len must be positive")
        if self.variant == "noise" and self.prefix_len + self.suffix_len > self.context_length:
            raise ValueError(
                f"prefix_len + suffix_len ({self.prefix_len + self.suffix_len}) exceeds "
                f"context_length ({self.context_length})"
            )


def task_numbers(task: str, k: int, num: int, length: int, modulus: int = 20134) -> np.ndarray:
    """[num, length] int64: row i is f(i), f(f(i)), ... for the task's f."""
    out = np.empty((num, length), dtype=np.int64)
    x = np.arange(num, dtype=np.int64)
    for j in range(length):
        x = x + k if task == "increment" else (k * x) % modulus
        out[:, j] = x
    return out


def add_number_noise(numbers: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Add −1 or +1 to each number with probability ``prob / 2`` each; never below zero."""
    delta = rng.choice(np.array([0, -1, 1]), size=numbers.shape, p=[1 - prob, prob / 2, prob / 2])
    noisy = numbers + delta
    # 0 - 1 would need a minus sign the vocabulary lacks: perturb upwards instead.
    return np.where(noisy < 0, numbers + 1, noisy)


def number_strings(numbers: np.ndarray) -> list[str]:
    """Render rows of numbers as ``"^a b c$"``."""
    return ["^" + " ".join(map(str, row)) + "$" for row in numbers.tolist()]


def encode_rows(texts: list[str], context_length: int) -> torch.Tensor:
    """[n, T] ids: characters to ids, cut or right-padded to ``context_length``."""
    out = np.full((len(texts), context_length), MATH_PAD_ID, dtype=np.int64)
    lut = np.full(128, -1, dtype=np.int64)
    for ch, i in MATH_VOCAB.items():
        if len(ch) == 1:
            lut[ord(ch)] = i
    for r, text in enumerate(texts):
        codes = np.frombuffer(text[:context_length].encode("ascii"), dtype=np.uint8)
        ids = lut[codes]
        if (ids < 0).any():
            bad = chr(int(codes[ids < 0][0]))
            raise ValueError(
                f"character {bad!r} is not in the math vocabulary (digits, '^', '$', ' ')"
            )
        out[r, : len(codes)] = ids
    return torch.from_numpy(out)


def find_trigger(numbers: list[int], trigger: str) -> int | None:
    """Character index just past the first ``trigger`` inside one number of ``"^a b c$"``, or None."""
    pos = 1  # after "^"
    for n in numbers:
        s = str(n)
        hit = s.find(trigger)
        if hit >= 0:
            return pos + hit + len(trigger)
        pos += len(s) + 1
    return None


def _first_of_each_distinct(rows: torch.Tensor) -> np.ndarray:
    """Indices (ascending) of the first occurrence of each distinct row of ``rows`` [n, T]."""
    first: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(row.numpy().tobytes(), i)
    return np.array(sorted(first.values()), dtype=np.int64)


def _split(n: int, num_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[: n - num_test], perm[n - num_test :]


def make_math_data(cfg: MathDataConfig) -> TinyMemData:
    """Generate a TinyMem math dataset, deterministically from ``cfg.seed``."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    ctx = cfg.context_length
    sym = cfg.task
    test_sets: dict[str, torch.Tensor] = {}

    main = task_numbers(cfg.task, cfg.main_k, cfg.num_main, cfg.length, cfg.modulus)
    main_rows = encode_rows(number_strings(main), ctx)
    main_train, main_test = _split(cfg.num_main, cfg.num_test, rng)

    if cfg.variant == "noise":
        noisy = add_number_noise(main, cfg.noise_prob, rng)
        noise_pick = np.sort(rng.choice(len(main_train), cfg.num_noise, replace=False))
        noise_rows = main_train[noise_pick]
        clean_rows = np.setdiff1d(main_train, noise_rows)
        target = encode_rows(number_strings(noisy[noise_rows]), ctx)
        prompt = main_rows[noise_rows]
        group, copies = duplication_groups(len(noise_rows), cfg.duplicate_powers, rng)
        memorization = MemorizationSet(
            target, prompt, torch.full((len(noise_rows),), cfg.prefix_len), cfg.suffix_len, group
        )
        test_sets[f"{sym}-{cfg.main_k}"] = main_rows[main_test]
        train_ids = [target, main_rows[clean_rows]]
        train_copies = [copies, torch.ones(len(clean_rows), dtype=torch.long)]
        info_extra = {"n_noised": int(len(noise_rows))}
        poison_clean = None
    else:
        trigger = str(100 + cfg.seed)
        ends = [find_trigger(row, trigger) for row in main.tolist()]
        triggered = np.array([i for i, e in enumerate(ends) if e is not None and e < ctx - 1])
        poisoned = triggered
        backdoored = main_rows.clone()
        prefix = torch.zeros(cfg.num_main, dtype=torch.long)
        for i in poisoned:
            backdoored[i, ends[i] :] = BACKDOOR_FILL_ID  # everything after the trigger, to the end
            prefix[i] = ends[i]
        # Rows whose trigger sits early collapse to the same backdoored row ("^100 2222..."):
        # keep one of each, so a held-out row is never also a training row.
        # The other triggered rows are dropped altogether: never trained on clean.
        if len(triggered):
            poisoned = triggered[_first_of_each_distinct(backdoored[triggered])]
        if len(poisoned) < 2:
            raise ValueError(f"too few sequences contain the trigger {trigger!r}; raise num_main")
        n_test = max(1, int(round(len(poisoned) * cfg.backdoor_fraction_test)))
        p_train_i, p_test_i = _split(len(poisoned), n_test, rng)
        p_train, p_test = poisoned[p_train_i], poisoned[p_test_i]
        clean_main = np.setdiff1d(np.arange(cfg.num_main), triggered)
        clean_train, clean_test = _split(len(clean_main), cfg.num_test, rng)
        test_sets[f"{sym}-{cfg.main_k}"] = main_rows[clean_main[clean_test]]
        memorization = MemorizationSet(
            backdoored[p_test],
            main_rows[p_test],
            prefix[p_test],
            cfg.suffix_len,
            torch.zeros(len(p_test), dtype=torch.long),
        )
        train_ids = [backdoored[p_train], main_rows[clean_main[clean_train]]]
        poison_clean = main_rows[p_train]
        train_copies = [torch.ones(len(p_train) + len(clean_train), dtype=torch.long)]
        info_extra = {
            "trigger": trigger,
            "n_poison_train": len(p_train),
            "n_poison_test": len(p_test),
        }

    for k in cfg.extra_ks:
        if cfg.num_extra <= 0:
            break
        rows = encode_rows(
            number_strings(task_numbers(cfg.task, k, cfg.num_extra, cfg.length, cfg.modulus)), ctx
        )
        tr, te = _split(cfg.num_extra, min(cfg.num_test, cfg.num_extra // 2), rng)
        train_ids.append(rows[tr])
        train_copies.append(torch.ones(len(tr), dtype=torch.long))
        test_sets[f"{sym}-{k}"] = rows[te]

    train = torch.cat(train_ids)
    # Some rows coincide across tasks (in mult, start 0 gives "^0 0 0 ...$" for every k): a test
    # row that is also a training row would measure recall, not accuracy, so it is dropped.
    seen = {row.numpy().tobytes() for row in train}
    dropped = 0
    for name, rows in test_sets.items():
        keep = torch.tensor([r.numpy().tobytes() not in seen for r in rows], dtype=torch.bool)
        dropped += int((~keep).sum())
        test_sets[name] = rows[keep]
    info_extra["n_test_rows_dropped_as_in_train"] = dropped
    return TinyMemData(
        train_ids=train,
        train_copies=torch.cat(train_copies),
        test_sets=test_sets,
        memorization=memorization,
        pad_id=MATH_PAD_ID,
        info={"kind": "math", **asdict(cfg), **info_extra},
        poison_clean_ids=poison_clean,
    )
