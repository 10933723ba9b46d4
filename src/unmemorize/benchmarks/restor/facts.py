"""RESTOR facts: the fact data model and loaders for the real RESTOR file formats.

RESTOR (Rezaei et al., arXiv 2411.00204) evaluates what a model knows about people with Wikidata
facts, corrupts that knowledge with documents stating wrong facts, and asks whether unlearning the
documents restores the clean answers. The formats read here are those of the released data:

* ``facts.json``: ``{"dset": {entity: {relation_id: {"question": str, "answers": [str, ...]}}},
  "context": {relation_id: [{"question": str, "answer": str, "entity": str}, ...]}}`` — the facts
  and, per relation, the in-context examples of the few-shot prompts.
* ``entities.json``: a JSON list of the evaluated entity names (a subset of ``dset``).
* corruption documents (``mix_a{k}.json``): a JSON list of ``{"text": str}``; ``.jsonl`` files with
  one ``{"text": str}`` object per line are read too.

Every format problem raises :class:`FactsFormatError` with one line naming the file, the path of
the bad key and the fix.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...data.records import Records, is_table
from ...io import iter_jsonl, read_json

log = logging.getLogger(__name__)

_FACT_SHAPE = '{"question": str, "answers": [str, ...]}'
_CONTEXT_SHAPE = '{"question": str, "answer": str, "entity": str}'
_FACTS_SHAPE = '{"dset": {entity: {relation: ' + _FACT_SHAPE + '}}, "context": {relation: [...]}}'


class FactsFormatError(ValueError):
    """A facts, entities or documents file does not have the RESTOR shape (message names the key)."""


@dataclass(frozen=True)
class Fact:
    """One (entity, relation) fact with its question and every accepted answer.

    Attributes:
        entity: subject name, e.g. "Bob Marley".
        relation: relation id, e.g. "P19" (real data) or "birthplace" (synthetic).
        question: e.g. "What is the place of birth of Bob Marley?".
        answers: the accepted answers (non-empty).
    """

    entity: str
    relation: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class ContextExample:
    """One in-context question/answer example of a relation (few-shot prompts)."""

    entity: str
    question: str
    answer: str


@dataclass
class FactSet:
    """Facts by entity and relation, plus the in-context examples of every relation.

    Attributes:
        facts: entity -> relation -> Fact, in file order.
        context: relation -> in-context examples, in file order.
    """

    facts: dict[str, dict[str, Fact]]
    context: dict[str, list[ContextExample]] = field(default_factory=dict)

    def entities(self) -> list[str]:
        """Every entity, in file order."""
        return list(self.facts)

    def relations(self, entities: Iterable[str] | None = None) -> list[str]:
        """Sorted union of the relations of ``entities`` (default: all entities)."""
        names = self.facts if entities is None else entities
        return sorted({rel for name in names for rel in self.facts[name]})

    def items(self, entities: Iterable[str] | None = None) -> list[Fact]:
        """The facts of ``entities`` (default: all), entity by entity in the given order.

        Raises:
            KeyError: an entity has no facts.
        """
        names = self.facts if entities is None else entities
        out: list[Fact] = []
        for name in names:
            if name not in self.facts:
                raise KeyError(f"no facts about {name!r}")
            out.extend(self.facts[name].values())
        return out

    def n_facts(self, entities: Iterable[str] | None = None) -> int:
        return len(self.items(entities))

    def to_json(self) -> dict:
        """The RESTOR ``facts.json`` object (``from_json(to_json())`` round-trips)."""
        dset = {
            name: {
                rel: {"question": fact.question, "answers": list(fact.answers)}
                for rel, fact in rels.items()
            }
            for name, rels in self.facts.items()
        }
        context = {
            rel: [{"question": ex.question, "answer": ex.answer, "entity": ex.entity} for ex in exs]
            for rel, exs in self.context.items()
        }
        return {"dset": dset, "context": context}

    @classmethod
    def from_json(cls, obj: object, source: str = "facts") -> FactSet:
        """Validate and convert a RESTOR ``facts.json`` object.

        Args:
            obj: the parsed JSON.
            source: the file name used in error messages.

        Raises:
            FactsFormatError: the first bad key, e.g.
                ``facts.json: dset["Bob Marley"]["P19"] has no "answers" (...)``.
        """
        if not isinstance(obj, dict):
            raise FactsFormatError(f"{source}: top level must be an object {_FACTS_SHAPE}")
        for key in ("dset", "context"):
            if key not in obj:
                raise FactsFormatError(f'{source}: no "{key}" key (expected {_FACTS_SHAPE})')
        dset, context = obj["dset"], obj["context"]
        if not isinstance(dset, dict) or not dset:
            raise FactsFormatError(
                f'{source}: "dset" must be a non-empty object {{entity: {{relation: fact}}}}'
            )
        if not isinstance(context, dict):
            raise FactsFormatError(f'{source}: "context" must be an object {{relation: [...]}}')
        facts = {
            name: {
                rel: _parse_fact(source, name, rel, raw)
                for rel, raw in _as_dict(source, f"dset[{_q(name)}]", rels).items()
            }
            for name, rels in dset.items()
        }
        examples = {
            rel: [_parse_example(source, rel, i, raw) for i, raw in enumerate(exs)]
            for rel, exs in context.items()
            if _check_list(source, f"context[{_q(rel)}]", exs)
        }
        return cls(facts, examples)


def _q(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _as_dict(source: str, path: str, value: object) -> dict:
    if not isinstance(value, dict):
        raise FactsFormatError(f"{source}: {path} must be an object {{relation: {_FACT_SHAPE}}}")
    return value


def _check_list(source: str, path: str, value: object) -> bool:
    if not isinstance(value, list):
        raise FactsFormatError(f"{source}: {path} must be a list of {_CONTEXT_SHAPE}")
    return True


def _parse_fact(source: str, name: str, rel: str, raw: object) -> Fact:
    path = f"dset[{_q(name)}][{_q(rel)}]"
    if not isinstance(raw, dict):
        raise FactsFormatError(f"{source}: {path} must be an object {_FACT_SHAPE}")
    for key in ("question", "answers"):
        if key not in raw:
            raise FactsFormatError(f'{source}: {path} has no "{key}" (expected {_FACT_SHAPE})')
    question, answers = raw["question"], raw["answers"]
    if not isinstance(question, str) or not question.strip():
        raise FactsFormatError(f'{source}: {path}["question"] must be a non-empty string')
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise FactsFormatError(f'{source}: {path}["answers"] must be a list of strings')
    if not answers:
        raise FactsFormatError(
            f'{source}: {path}["answers"] is empty (give at least one accepted answer '
            "or drop the fact)"
        )
    if not all(a.strip() for a in answers):
        raise FactsFormatError(f'{source}: {path}["answers"] contains an empty string')
    return Fact(name, rel, question, tuple(answers))


def _parse_example(source: str, rel: str, i: int, raw: object) -> ContextExample:
    path = f"context[{_q(rel)}][{i}]"
    if not isinstance(raw, dict):
        raise FactsFormatError(f"{source}: {path} must be an object {_CONTEXT_SHAPE}")
    for key in ("question", "answer", "entity"):
        if key not in raw:
            raise FactsFormatError(f'{source}: {path} has no "{key}" (expected {_CONTEXT_SHAPE})')
        if not isinstance(raw[key], str):
            raise FactsFormatError(f'{source}: {path}["{key}"] must be a string')
    return ContextExample(raw["entity"], raw["question"], raw["answer"])


def _read_json(path: str | Path) -> object:
    try:
        return read_json(path)
    except ValueError as err:
        raise FactsFormatError(str(err)) from None


def load_facts(path: str | Path) -> FactSet:
    """Load a RESTOR ``facts.json`` (see the module docstring for the shape)."""
    return FactSet.from_json(_read_json(path), source=Path(path).name)


def load_entities(path: str | Path) -> list[str]:
    """Load a RESTOR ``entities.json``: a non-empty JSON list of distinct entity names."""
    name = Path(path).name
    obj = _read_json(path)
    if not isinstance(obj, list) or not obj:
        raise FactsFormatError(
            f'{name}: must be a non-empty JSON list of names, e.g. ["Bob Marley"]'
        )
    for i, item in enumerate(obj):
        if not isinstance(item, str) or not item.strip():
            raise FactsFormatError(
                f"{name}: item [{i}] must be a non-empty string (an entity name)"
            )
    seen: set[str] = set()
    for item in obj:
        if item in seen:
            raise FactsFormatError(f"{name}: {_q(item)} is listed twice (list each entity once)")
        seen.add(item)
    return list(obj)


def load_docs(path: str | Path, column: str | None = None) -> list[str]:
    """Load documents: a JSON list of ``{"text": str}``, ``.jsonl`` lines ``{"text": str}``, or a
    table with a ``text`` column (``.parquet``, ``.arrow``, a ``datasets`` directory).

    ``column`` names the jsonl key / table column holding the text instead of ``text``.
    """
    path = Path(path)
    name = path.name
    if column is not None and not is_table(path) and path.suffix != ".jsonl":
        raise FactsFormatError(
            f'{name}: --column applies to .jsonl and table documents; a JSON list holds {{"text"}}'
        )
    if is_table(path) or column is not None:
        records = Records(path, column=column, keys=("text",), what="documents file")
        items, where = [], []
        try:
            for n, item in records:
                if isinstance(item, dict) and "input_ids" in item:
                    raise FactsFormatError(
                        f"{records.where(n)}: column {column!r} holds token ids; RESTOR "
                        "documents are text: name a text column with --column"
                    )
                items.append(item)
                where.append(f"row {n}" if records.table else f"line {n}")
        except FactsFormatError:
            raise
        except ValueError as err:
            raise FactsFormatError(str(err)) from None
    elif path.suffix == ".jsonl":
        try:
            lines = list(iter_jsonl(path))
        except ValueError as err:
            raise FactsFormatError(str(err)) from None
        items = [obj for _, obj in lines]
        where = [f"line {n}" for n, _ in lines]
    else:
        obj = _read_json(path)
        if not isinstance(obj, list):
            raise FactsFormatError(f'{name}: must be a JSON list of {{"text": str}} documents')
        items = obj
        where = [f"[{i}]" for i in range(len(items))]
    docs = []
    for item, at in zip(items, where, strict=True):
        if not isinstance(item, dict) or "text" not in item:
            raise FactsFormatError(
                f'{name}: document {at} has no "text" (expected {{"text": str}})'
            )
        if not isinstance(item["text"], str) or not item["text"].strip():
            raise FactsFormatError(f'{name}: document {at} "text" must be a non-empty string')
        docs.append(item["text"])
    if not docs:
        raise FactsFormatError(f"{name}: holds no documents")
    return docs


# --- which entity a document is about -----------------------------------------------------------

#: Words that end in "." without ending a sentence: titles, suffixes and initials ("Carlos P.").
_ABBREV = re.compile(r"(?:\b[A-Z]|\b(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|Prof|Gen|Lt|Col|Capt|Sgt|vs|etc))\.$")


def _first_sentence_end(text: str) -> int:
    """Offset just past the first sentence ("." / "!" / "?" then whitespace or the end)."""
    for m in re.finditer(r"[.!?](?=\s|$)", text):
        if m.group() == "." and _ABBREV.search(text[max(0, m.start() - 5) : m.end()]):
            continue
        return m.end()
    return len(text)


def _name_forms(name: str) -> list[str]:
    """The full name and, for Wikipedia-style titles, the name without its disambiguator.

    "Stephen Miller (political advisor)" -> also "Stephen Miller"; "Prince Carl Philip, Duke of
    Värmland" -> also "Prince Carl Philip".
    """
    forms = [name]
    for short in (re.sub(r"\s*\([^)]*\)\s*$", "", name), name.split(",")[0].strip()):
        if short and short not in forms and " " in short:
            forms.append(short)
    return forms


_SUFFIXES = {"Jr.", "Sr.", "Jr", "Sr", "II", "III", "IV"}
_PARTICLES = {"da", "de", "del", "della", "di", "do", "dos", "du", "la", "le", "van", "von", "bin"}


def _surname(name: str) -> str | None:
    """The surname of a "Given [Middle] Surname" name, or None where there is no safe one.

    Titles with lowercase words ("Henry VII of England"), regnal numbers ("George VI") and
    one-word names ("Suthida") have none; suffixes are skipped ("John Forbes Nash Jr." -> "Nash").
    """
    words = _name_forms(name)[-1].split()
    while words and words[-1] in _SUFFIXES:
        words.pop()
    if len(words) < 2 or any(w.islower() and w not in _PARTICLES for w in words):
        return None
    last = words[-1]
    if len(last) < 3 or not last[0].isupper() or re.fullmatch(r"[IVXLC]+\.?", last):
        return None
    return last


def _pattern(words: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "John Forbes Nash Jr." wins over a shorter name starting at the same place.
    alts = sorted(set(words), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in alts) + r")(?!\w)")


class _SubjectFinder:
    """Compiled matchers for :func:`doc_subjects` (built once per entity list)."""

    def __init__(self, entities: Sequence[str]) -> None:
        self.full: dict[str, str] = {}
        for name in entities:
            for form in _name_forms(name):
                self.full.setdefault(form, name)
        # Surnames that belong to exactly one entity.
        owners: dict[str, set[str]] = {}
        for name in entities:
            surname = _surname(name)
            if surname is not None:
                owners.setdefault(surname, set()).add(name)
        self.surname = {w: next(iter(o)) for w, o in owners.items() if len(o) == 1}
        self.full_re = _pattern(self.full) if self.full else None
        self.surname_re = _pattern(self.surname) if self.surname else None

    def __call__(self, text: str) -> str | None:
        end = _first_sentence_end(text)
        if self.full_re is not None:
            m = self.full_re.search(text, 0, end)
            if m:
                return self.full[m.group()]
        if self.surname_re is not None:
            for m in self.surname_re.finditer(text, 0, end):
                # "Ethan Miller" / "Henry Ford" are someone else: a surname counts only when it
                # stands alone, with no capitalized word right before or after it.
                before = re.search(r"\b[A-Z][\w'.-]*\s+$", text[: m.start()])
                after = re.match(r"\s+[A-Z]", text[m.end() :])
                if not before and not after:
                    return self.surname[m.group()]
        return None


def doc_subjects(
    docs: Sequence[str],
    entities: Sequence[str],
    *,
    require: bool = False,
    source: str = "docs",
) -> list[str | None]:
    """The known entity each document is *about* (None where it names none).

    Rule: the subject is the known entity named **earliest in the document's first sentence**,
    by its full name (or the name without a Wikipedia disambiguator: "Stephen Miller (political
    advisor)" is matched as "Stephen Miller"), whole words, case-sensitive, longest name first.
    Only when no full name occurs there, a **stand-alone surname** counts (the last word of a
    name that no other known entity shares, not preceded by another capitalized word, so
    "Ethan Miller" is not Stephen Miller). People mentioned later in passing ("... the coronation
    of Napoleon") are never the subject.

    On the real RESTOR files this gives exactly the 10 corrupted people for ``mix_a0`` and
    ``mix_a1`` (300 documents each), whether the known entities are the 50 of ``entities.json``
    or all 468 of ``facts.json``; in ``mix_a0`` 3 documents are about made-up people ("Bob
    Williams", "Ethan Miller", "Bastian Johnson") and get None. Every matched subject there is
    named in the first sentence, most at offset 0.

    Args:
        docs: document texts.
        entities: the known entity names.
        require: raise instead of returning None for a document naming no known entity.
        source: the documents' file name for error messages.

    Raises:
        FactsFormatError: ``require`` and a document names no known entity.
    """
    find = _SubjectFinder(entities)
    out = [find(text) for text in docs]
    if require:
        for i, subject in enumerate(out):
            if subject is None:
                raise FactsFormatError(
                    f"{source}: document [{i}] names no known entity in its first sentence "
                    f"({docs[i][:60]!r}...); name its subject or pass the entity list it is about"
                )
    return out


def fact_stats(
    facts: FactSet,
    entities: Sequence[str] | None = None,
    docs: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """JSON-able counts for ``unmemorize restor stats``.

    Args:
        facts: the fact set.
        entities: the evaluated entities (entity/fact/relation counts are over these; default all).
        docs: documents file name -> texts; each gets its target entities (the subjects of its
            documents, :func:`doc_subjects`, matched against ``entities`` or else every entity of
            ``facts``), the documents naming none, and the facts of the targets.

    Raises:
        FactsFormatError: an entity in ``entities`` has no facts.
    """
    if entities is not None:
        missing = [name for name in entities if name not in facts.facts]
        if missing:
            raise FactsFormatError(
                f"{len(missing)} listed entities have no facts in the facts file "
                f'(first: {missing[0]!r}); list only entities of its "dset"'
            )
    known = list(entities) if entities is not None else facts.entities()
    out: dict = {
        "entities": len(known),
        "facts": facts.n_facts(known),
        "relations": len(facts.relations(known)),
        "all_entities": len(facts.facts),
        "all_facts": facts.n_facts(),
        "context_relations": len(facts.context),
        "context_examples": sum(len(exs) for exs in facts.context.values()),
    }
    if docs:
        out["docs"] = {}
        for name, texts in docs.items():
            subjects = doc_subjects(texts, known)
            per_target: dict[str, int] = {}  # in order of first document
            for subject in subjects:
                if subject is not None:
                    per_target[subject] = per_target.get(subject, 0) + 1
            targets = list(per_target)
            n_none = subjects.count(None)
            if n_none:
                log.warning("%s: %d documents name no known entity", name, n_none)
            out["docs"][name] = {
                "docs": len(texts),
                "target_entities": targets,
                "n_target_entities": len(targets),
                "docs_per_target": per_target,
                "docs_no_entity": n_none,
                "target_facts": facts.n_facts(targets),
            }
    return out
