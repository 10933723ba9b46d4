"""What a RESTOR run works on: the facts, the targets and the documents, as token batches.

:class:`RestorTask` comes from the synthetic world (:func:`synthetic_task`) or from RESTOR's
released files (:func:`file_task`); the pipeline in :mod:`unmemorize.benchmarks.restor` treats
both the same.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from ...io import atomic_write_json
from .config import CleanTrainConfig, RestorConfig
from .facts import FactSet
from .world import FactWorld

if TYPE_CHECKING:
    from ...methods import UnlearnData


def document_pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that right-pads documents: the tokenizer's pad token, else its eos (GPT-2, Llama)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_documents(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> torch.Tensor:
    """[N, T] right-padded ids of ``texts`` (eos appended, cut at ``max_length``)."""
    pad = document_pad_id(tokenizer)
    rows = [tokenizer(t).input_ids[: max_length - 1] + [tokenizer.eos_token_id] for t in texts]
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def clean_batches(
    world: FactWorld, tokenizer: PreTrainedTokenizerBase, cfg: CleanTrainConfig, max_length: int
) -> Callable[[int], torch.Tensor]:
    """``step -> ids``: fresh random biographies of everyone + QA documents of QA-trained people."""
    rng = random.Random(cfg.seed * 1_000_003 + 11)
    people = world.facts.entities()

    def batch(step: int) -> torch.Tensor:
        texts = [world.biography(rng.choice(people), rng) for _ in range(cfg.bio_per_batch)]
        texts += [world.qa_document(rng) for _ in range(cfg.qa_per_batch)]
        return encode_documents(tokenizer, texts, max_length)

    return batch


@dataclass
class RestorTask:
    """Everything a RESTOR run needs besides the model.

    Attributes:
        facts: the fact set (questions, accepted answers, in-context examples).
        targets: people the corruption documents are about (their facts are the target facts).
        untargeted: other evaluated people (collateral damage).
        corruption_docs: what the clean model is corrupted with.
        forget_docs: the unlearning forget set (the corruption documents, or their simplified
            twins).
        retain_docs: clean text that excludes the targets (the retain set).
        wrong: (entity, relation) -> the wrong answers the documents state (logit analysis;
            empty when unknown, as for RESTOR's released files).
        replay: draws one clean training document (mixed into corruption batches), or None.
    """

    facts: FactSet
    targets: list[str]
    untargeted: list[str]
    corruption_docs: list[str]
    forget_docs: list[str]
    retain_docs: list[str]
    wrong: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    replay: Callable[[random.Random], str] | None = None

    def write(self, directory: Path) -> None:
        """Save the run's data (facts.json, entities.json, docs) for audit and reuse."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / "facts.json", self.facts.to_json())
        atomic_write_json(directory / "entities.json", self.targets + self.untargeted)
        atomic_write_json(directory / "targets.json", self.targets)
        for name, docs in (
            ("corruption_docs", self.corruption_docs),
            ("forget_docs", self.forget_docs),
            ("retain_docs", self.retain_docs),
        ):
            atomic_write_json(directory / f"{name}.json", [{"text": t} for t in docs])
        atomic_write_json(
            directory / "wrong.json",
            [{"entity": e, "relation": r, "answers": a} for (e, r), a in self.wrong.items()],
        )

    @classmethod
    def read(cls, directory: str | Path) -> RestorTask:
        """The task :meth:`write` saved in ``directory`` (``OUT/data`` of a RESTOR run).

        The replay stream is not saved (it only feeds corruption), so ``replay`` is None.

        Raises:
            FactsFormatError: a missing or malformed file.
        """
        from .facts import _read_json, load_docs, load_entities, load_facts

        directory = Path(directory)
        targets = load_entities(directory / "targets.json")
        target_set = set(targets)
        wrong = _read_json(directory / "wrong.json")
        return cls(
            facts=load_facts(directory / "facts.json"),
            targets=targets,
            untargeted=[
                e for e in load_entities(directory / "entities.json") if e not in target_set
            ],
            corruption_docs=load_docs(directory / "corruption_docs.json"),
            forget_docs=load_docs(directory / "forget_docs.json"),
            retain_docs=load_docs(directory / "retain_docs.json"),
            wrong={(w["entity"], w["relation"]): list(w["answers"]) for w in wrong},
        )


def unlearn_data(
    tokenizer: PreTrainedTokenizerBase,
    forget: Sequence[str],
    retain: Sequence[str],
    max_length: int,
) -> UnlearnData:
    """The forget / retain rows every unlearning method receives, as token ids."""
    from ...methods import UnlearnData

    # One encoding pass pads forget and retain rows to a common width, as UnlearnData needs.
    ids = encode_documents(tokenizer, [*forget, *retain], max_length)
    return UnlearnData(
        forget_ids=ids[: len(forget)],
        retain_ids=ids[len(forget) :],
        pad_id=document_pad_id(tokenizer),
    )


def synthetic_task(world: FactWorld, cfg: RestorConfig) -> RestorTask:
    """The RESTOR task of a generated world at ``cfg.unlearn.level``."""
    corruption = world.corruption_documents(cfg.unlearn.level)
    forget = world.corruption_documents(0) if cfg.unlearn.simplified else corruption
    # Replay never restates a target's true facts: that would re-teach exactly what the
    # corruption overwrites (measured: target accuracy stalls near 0.55 instead of falling).
    people = [e for e in world.facts.entities() if e not in set(world.targets)]
    qa_share = cfg.clean.qa_per_batch / max(1, cfg.clean.bio_per_batch + cfg.clean.qa_per_batch)

    def replay(rng: random.Random) -> str:
        if rng.random() < qa_share:
            return world.qa_document(rng)
        return world.biography(rng.choice(people), rng)

    return RestorTask(
        facts=world.facts,
        targets=list(world.targets),
        untargeted=list(world.untargeted),
        corruption_docs=corruption,
        forget_docs=forget,
        retain_docs=world.retain_documents(cfg.unlearn.n_retain, seed=cfg.world.seed + 1),
        wrong=dict(world.wrong),
        replay=replay if cfg.corrupt.replay_per_batch else None,
    )


def file_task(
    facts: str | Path,
    docs: str | Path,
    *,
    entities: str | Path | None = None,
    retain: str | Path | None = None,
    forget: str | Path | None = None,
    simplified: bool = False,
    n_retain: int = 512,
    seed: int = 0,
    column: str | None = None,
) -> RestorTask:
    """A RESTOR task from RESTOR-format files (``facts.json``, ``entities.json``, ``mix_a{k}.json``).

    Targets are the people the documents are about (:func:`~unmemorize.data.facts.doc_subjects`);
    untargeted are the other evaluated people (``entities`` or every person of ``facts``). The
    forget set is ``forget`` when given, else the documents; the retain set is ``retain`` when
    given, else (offline stand-in for RESTOR's C4 sample) documents of five QA lines about the
    people of ``facts`` who are never evaluated (neither targets nor untargeted): a retain line
    about an untargeted person would train on a fact that measures collateral damage. RESTOR's
    facts.json holds 468 people, its entities.json the 50 evaluated ones. The wrong answers are
    not in RESTOR's released files, so the logit analysis reports no "corrupted" category. The
    documents, forget and retain files may also be tables (``.parquet``, ``.arrow``, ``datasets``
    directories); ``column`` names the key/column that holds their text (default ``text``).

    Raises:
        FactsFormatError: a file of the wrong shape, or documents that name no known entity.
        ValueError: no ``retain`` file and every person of ``facts`` is evaluated (nothing is
            left to build the default retain set from).
    """
    from .facts import FactsFormatError, doc_subjects, load_docs, load_entities, load_facts

    fact_set = load_facts(facts)
    known = load_entities(entities) if entities else fact_set.entities()
    missing = [e for e in known if e not in fact_set.facts]
    if missing:
        raise FactsFormatError(
            f"{Path(str(entities)).name}: {len(missing)} entities have no facts (first: "
            f"{missing[0]!r}); list only people of the facts file"
        )
    corruption = load_docs(docs, column)
    subjects = doc_subjects(corruption, known)
    targets = list(dict.fromkeys(s for s in subjects if s is not None))
    if not targets:
        raise FactsFormatError(
            f"{Path(docs).name}: no document names a known entity in its first sentence; "
            "check that --entities lists the people the documents are about"
        )
    if simplified and forget is None:
        raise ValueError(
            "--simplified needs the simplified documents as a forget file for real data "
            "(RESTOR's level-0 file aligned with --docs)"
        )
    forget_docs = load_docs(forget, column) if forget else corruption
    target_set = set(targets)
    if retain:
        retain_docs = load_docs(retain, column)
    else:
        evaluated = set(known)  # the targets are among them
        bystanders = [e for e in fact_set.entities() if e not in evaluated]
        if not bystanders:
            raise ValueError(
                f"every person of {Path(facts).name} is evaluated, so no fact is free for the "
                "default retain set; pass --retain FILE (clean text, e.g. a C4 sample as RESTOR "
                "used) or --entities FILE (the evaluated people)"
            )
        rng = random.Random(seed)
        lines = [f"{f.question} {f.answers[0]}" for f in fact_set.items(bystanders)]
        rng.shuffle(lines)
        retain_docs = [
            "\n".join(lines[i : i + 5]) for i in range(0, min(len(lines), 5 * n_retain), 5)
        ]
    return RestorTask(
        facts=fact_set,
        targets=targets,
        untargeted=[e for e in known if e not in target_set],
        corruption_docs=corruption,
        forget_docs=forget_docs,
        retain_docs=retain_docs,
    )


__all__ = [
    "RestorTask",
    "clean_batches",
    "document_pad_id",
    "encode_documents",
    "file_task",
    "synthetic_task",
    "unlearn_data",
]
