"""RESTOR benchmark settings: the config dataclasses and the presets (the grid: :mod:`.spaces`).

See :mod:`unmemorize.benchmarks.restor` for the pipeline these configure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ...config import apply_overrides
from ...models import ModelConfig
from ...registry import Registry
from .world import FactWorldConfig

PRESETS: Registry = Registry("RESTOR preset")


@dataclass
class CleanTrainConfig:
    """Pre-training of the clean model on the synthetic world."""

    steps: int = 600
    """Optimizer steps."""
    bio_per_batch: int = 32
    """Biographies (statements in random templates) per batch."""
    qa_per_batch: int = 16
    """QA documents (QA-trained people only) per batch."""
    lr: float = 2e-3
    """Peak AdamW learning rate (warmup, then cosine decay: the final model is scored)."""
    warmup: int = 50
    """Warmup steps."""
    seed: int = 0
    """Seeds the model initialisation and the batch stream."""


@dataclass
class CorruptConfig:
    """Continued training on the corruption documents."""

    mode: str = "full"
    """``full`` fine-tune or ``lora`` (peft, merged after; RESTOR's choice for Llama-3-8B)."""
    epochs: int = 3
    """Passes over the corruption documents."""
    lr: float = 3e-4
    """Peak learning rate (warmup 10%, cosine decay)."""
    docs_per_batch: int = 16
    """Corruption documents per batch."""
    replay_per_batch: int = 32
    """Clean documents mixed into every batch (0 = RESTOR's pure continual pre-training)."""
    holdout: float = 0.0
    """Share of the documents never trained on (RESTOR's LLaMA-Factory ``val_size``: 0.1), drawn
    with ``seed``; they stay in the forget set."""
    lora_rank: int = 8
    """LoRA rank (LLaMA-Factory's default, as RESTOR)."""
    lora_alpha: int = 16
    """LoRA alpha."""
    seed: int = 0
    """Seeds the batch order."""

    def validate(self) -> None:
        if self.mode not in ("full", "lora"):
            from ...registry import suggest

            raise suggest(self.mode, ["full", "lora"], "corruption mode")
        if self.epochs < 1 or self.docs_per_batch < 1 or self.replay_per_batch < 0:
            raise ValueError("corrupt.epochs and corrupt.docs_per_batch must be positive")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"corrupt.holdout must lie in [0, 1), got {self.holdout}")


@dataclass
class UnlearnSetConfig:
    """What the unlearning methods get."""

    level: int = 1
    """Corruption level k: unrelated true statements per wrong one in each document."""
    simplified: bool = False
    """Unlearn the aligned level-0 documents (wrong facts only) instead of the level-k ones."""
    n_retain: int = 512
    """Clean retain documents (biographies of non-target people)."""


@dataclass
class EvalConfig:
    """Few-shot QA and logit analysis."""

    n_shots: int = 5
    """In-context examples per prompt (RESTOR: 5)."""
    max_new_tokens: int = 8
    """Greedy answer length cap (answers stop at the first newline)."""
    batch_size: int = 64
    """Prompts per generation batch."""
    n_random: int = 5
    """Random same-relation candidates per fact in the logit analysis."""
    val_fraction: float = 0.2
    """Share of target facts used to choose each method's configuration."""


@dataclass
class RestorConfig:
    """Everything that defines a RESTOR run on the synthetic world."""

    preset: str
    world: FactWorldConfig = field(default_factory=FactWorldConfig)
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(n_layers=4, d_model=128, context_length=128)
    )
    clean: CleanTrainConfig = field(default_factory=CleanTrainConfig)
    corrupt: CorruptConfig = field(default_factory=CorruptConfig)
    unlearn: UnlearnSetConfig = field(default_factory=UnlearnSetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.world.validate()
        self.model.validate()
        self.corrupt.validate()
        if self.unlearn.level < 0:
            raise ValueError(f"unlearn.level must be >= 0, got {self.unlearn.level}")
        if not 0 < self.eval.val_fraction < 1:
            raise ValueError("eval.val_fraction must lie strictly between 0 and 1")


@PRESETS.register("cpu-mini")
def cpu_mini_preset() -> RestorConfig:
    """100 people x 6 relations, GPT-2 4x128: the whole benchmark in minutes on 2 CPU cores."""
    return RestorConfig(preset="cpu-mini")


@PRESETS.register("micro")
def micro_preset() -> RestorConfig:
    """A seconds-long smoke run (tests): the pipeline end to end, numbers not meaningful."""
    return RestorConfig(
        preset="micro",
        world=FactWorldConfig(
            n_entities=24, n_targets=3, n_untargeted=4, docs_per_target=4, objects_per_relation=6
        ),
        model=ModelConfig(n_layers=1, d_model=32, n_heads=2, context_length=128),
        clean=CleanTrainConfig(steps=30, bio_per_batch=8, qa_per_batch=4, warmup=5),
        corrupt=CorruptConfig(epochs=1, docs_per_batch=4, replay_per_batch=4),
        unlearn=UnlearnSetConfig(n_retain=16),
        eval=EvalConfig(n_random=2, val_fraction=0.3),
    )


def make_restor_config(
    preset: str = "cpu-mini",
    overrides: Sequence[str] = (),
    *,
    level: int | None = None,
    simplified: bool | None = None,
    settings: str | None = None,
) -> RestorConfig:
    """Resolve a preset, apply ``key=value`` overrides (e.g. ``corrupt.mode=lora``), validate.

    ``settings`` (``default`` / ``paper``, :mod:`unmemorize.benchmarks.restor.settings`) put
    their config switches under ``overrides``.
    """
    from ..settings import get_settings
    from .settings import SETTINGS

    switches = get_settings(SETTINGS, settings, "restor").switches.get("config", ())
    cfg = apply_overrides(PRESETS.get(preset)(), [*switches, *overrides])
    if level is not None:
        cfg.unlearn.level = level
    if simplified is not None:
        cfg.unlearn.simplified = simplified
    cfg.validate()
    return cfg


__all__ = [
    "PRESETS",
    "CleanTrainConfig",
    "CorruptConfig",
    "EvalConfig",
    "RestorConfig",
    "UnlearnSetConfig",
    "make_restor_config",
]
