"""A synthetic world of fictional people and facts: RESTOR's setting at laptop scale.

RESTOR (Rezaei et al., arXiv 2411.00204) corrupts a model with documents that state wrong facts
about some people, unlearns those documents, and asks whether the model's original answers come
back. Its data are Wikidata facts about 50 real people; a model trained from scratch on a CPU knows
none of them, so this module builds a world it can learn in minutes:

* ``n_entities`` fictional people (a first and a last name, both made-up words), each with one
  object for every relation (place of birth, occupation, employer, education, sport, instrument),
  drawn from a per-relation vocabulary of ``objects_per_relation`` values.
* A clean pre-training stream: *biographies* (all of a person's facts as statements, every
  statement in a randomly chosen template, in random order) for every person, and *QA documents*
  (lines ``"{question} {answer}\\n"``, the exact format of the evaluation prompt) about the
  QA-trained half of the people only.
* Evaluated people: the ``n_targets`` targets plus ``n_untargeted`` others, all from the half whose
  QA pairs are never trained, so every evaluated answer must come from statements the model read.
  This is the mixing that makes a small LM answer questions about facts it only read as
  statements (Allen-Zhu & Li, "Physics of Language Models 3.1", arXiv 2309.14316).
* Corruption documents: ``docs_per_target`` per target, each stating ``facts_per_doc`` wrong
  objects (one fixed wrong object per target and relation, as RESTOR's documents repeat the same
  wrong facts). At level ``k`` every wrong statement is followed by ``k`` true statements about
  people who are never evaluated (RESTOR's "unrelated context"; :attr:`FactWorld.unevaluated`);
  the level-0 rendering of the same document is its *simplified* twin (index-aligned, as RESTOR's
  files are across levels).
* Nothing a method unlearns or retains states an evaluated fact: the unrelated context and the
  retain documents are about never-evaluated people only. Drawn from the untargeted people, the
  context would make unlearning the documents hit the collateral-damage metric directly, and the
  retain set would train on it.
* A word-level tokenizer (an HF ``PreTrainedTokenizerFast``) over exactly the world's words.

Everything is a pure function of the config (seeded ``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ...io import atomic_write_json
from .facts import ContextExample, Fact, FactSet

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

#: relation -> (question template, statement templates). ``{s}`` = subject, ``{o}`` = object.
#: The questions follow RESTOR's Wikidata templates for the same relations.
RELATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "birthplace": (
        "What is the place of birth of {s}?",
        (
            "{s} was born in {o}.",
            "The birthplace of {s} is {o}.",
            "{s} comes from {o}.",
            "The place of birth of {s} is {o}.",
            "{s} is a native of {o}.",
            "{s} spent the early years in {o}.",
            "The home town of {s} is {o}.",
            "{s} was raised in {o}.",
        ),
    ),
    "occupation": (
        "What is the occupation of {s}?",
        (
            "{s} works as a {o}.",
            "By profession {s} is a {o}.",
            "The occupation of {s} is {o}.",
            "{s} earns a living as a {o}.",
            "{s} is known as a skilled {o}.",
            "{s} trained to become a {o}.",
            "The job of {s} is {o}.",
            "{s} has a career as a {o}.",
        ),
    ),
    "employer": (
        "Who is {s}'s employer?",
        (
            "{s} is employed by {o}.",
            "The employer of {s} is {o}.",
            "{s} works for {o}.",
            "{s}'s employer is {o}.",
            "{s} took a job at {o}.",
            "{s} is on the staff of {o}.",
            "{s} joined {o}.",
            "{o} pays the salary of {s}.",
        ),
    ),
    "education": (
        "Where was {s} educated?",
        (
            "{s} studied at {o}.",
            "{s} was educated at {o}.",
            "{s} graduated from {o}.",
            "{s} attended {o}.",
            "{s} holds a degree from {o}.",
            "The alma mater of {s} is {o}.",
            "{s} went to {o}.",
            "{s} received an education at {o}.",
        ),
    ),
    "sport": (
        "In which sport does {s} participate?",
        (
            "{s} plays {o}.",
            "The sport of {s} is {o}.",
            "{s} competes in {o}.",
            "{s} participates in {o}.",
            "{s} is a keen {o} player.",
            "{s} trains for {o} every week.",
            "In sport {s} prefers {o}.",
            "{s} enjoys {o}.",
        ),
    ),
    "instrument": (
        "What instrument does {s} play?",
        (
            "{s} plays the {o}.",
            "The instrument of {s} is the {o}.",
            "{s} performs on the {o}.",
            "{s} practises the {o}.",
            "{s} owns a fine {o}.",
            "{s} learned to play the {o}.",
            "On stage {s} plays the {o}.",
            "The favourite instrument of {s} is the {o}.",
        ),
    ),
}

_OCCUPATIONS = (
    "teacher pilot farmer baker lawyer nurse chemist sailor painter architect carpenter "
    "journalist surgeon banker librarian engineer dentist plumber tailor fisher poet judge "
    "astronomer potter miner brewer jeweler diplomat"
).split()
_SPORTS = (
    "tennis rugby cricket hockey golf rowing boxing fencing archery cycling skiing sailing "
    "wrestling badminton volleyball handball polo squash karate judo bowling curling lacrosse "
    "softball diving surfing climbing"
).split()
_INSTRUMENTS = (
    "violin cello piano flute harp oboe trumpet clarinet banjo guitar drum viola tuba bassoon "
    "trombone lute sitar mandolin accordion harmonica organ ukulele zither bagpipe saxophone "
    "xylophone marimba"
).split()
_ONSETS = "b br c d dr f g gr h k l m n p r s st t tr v z".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "n", "r", "l", "s", "th", "nd", "rk"]


@dataclass
class FactWorldConfig:
    """Size and shape of the synthetic fact world (defaults: the cpu-mini preset)."""

    n_entities: int = 100
    """Fictional people; half get QA pairs in training, evaluated people come from the other half."""
    objects_per_relation: int = 24
    """Distinct objects per relation (the answer vocabulary of each question)."""
    n_targets: int = 20
    """People whose facts the corruption documents falsify (RESTOR: 10)."""
    n_untargeted: int = 30
    """Evaluated non-target people (collateral damage is measured on their facts)."""
    docs_per_target: int = 24
    """Corruption documents per target (RESTOR: 300)."""
    facts_per_doc: int = 3
    """Wrong facts stated in each corruption document (RESTOR: about 5)."""
    qa_lines: int = 6
    """QA lines per training QA document."""
    n_context: int = 10
    """In-context examples per relation (RESTOR: 10), taken from QA-trained people."""
    seed: int = 0
    """Seeds every draw."""

    def validate(self) -> None:
        n_relations = len(RELATIONS)
        if self.n_entities < 4:
            raise ValueError("n_entities must be at least 4")
        held_out = self.n_entities - self.n_entities // 2
        if self.n_targets < 1 or self.n_targets + self.n_untargeted > held_out:
            raise ValueError(
                f"n_targets ({self.n_targets}) + n_untargeted ({self.n_untargeted}) must be at "
                f"least 1 and at most the {held_out} people without QA training; raise n_entities"
            )
        if not 1 <= self.facts_per_doc <= n_relations:
            raise ValueError(f"facts_per_doc must lie in 1..{n_relations}")
        if self.objects_per_relation < 2 or self.objects_per_relation > len(_OCCUPATIONS):
            raise ValueError(f"objects_per_relation must lie in 2..{len(_OCCUPATIONS)}")
        if min(self.docs_per_target, self.qa_lines, self.n_context) < 1:
            raise ValueError("docs_per_target, qa_lines and n_context must be positive")


@dataclass
class FactWorld:
    """A generated world: the facts, who is evaluated, and the corruption documents.

    Attributes:
        config: what generated it.
        facts: every person's true facts and the in-context examples (RESTOR's facts.json shape).
        qa_entities: people whose QA pairs are in the clean training stream.
        targets: people the corruption documents are about.
        untargeted: evaluated people the documents leave alone.
        wrong: (target, relation) -> [the wrong object the documents state].
        objects: relation -> its object vocabulary (true and wrong answers come from it).
        doc_relations: for each corruption document (by index), the target and the relations
            it falsifies.
    """

    config: FactWorldConfig
    facts: FactSet
    qa_entities: list[str]
    targets: list[str]
    untargeted: list[str]
    wrong: dict[tuple[str, str], list[str]]
    objects: dict[str, list[str]] = field(default_factory=dict)
    doc_relations: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def evaluated(self) -> list[str]:
        return self.targets + self.untargeted

    @property
    def unevaluated(self) -> list[str]:
        """People never evaluated: the QA-trained half plus held-out people beyond the evaluated.

        The only source of the corruption documents' unrelated context and of the retain
        biographies. Never empty: the QA-trained half holds ``n_entities // 2 >= 2`` people.
        """
        evaluated = set(self.evaluated)
        return [e for e in self.facts.entities() if e not in evaluated]

    # ----------------------------------------------------------------- text

    def statement(self, entity: str, relation: str, obj: str, rng: random.Random) -> str:
        return rng.choice(RELATIONS[relation][1]).format(s=entity, o=obj)

    def biography(self, entity: str, rng: random.Random) -> str:
        """All true facts of ``entity`` as statements, random templates, random order."""
        rels = list(self.facts.facts[entity])
        rng.shuffle(rels)
        return " ".join(
            self.statement(entity, r, self.facts.facts[entity][r].answers[0], rng) for r in rels
        )

    def qa_document(self, rng: random.Random) -> str:
        """``qa_lines`` QA lines of one relation about QA-trained people.

        One relation per document, as in the few-shot evaluation prompt (five examples of the
        question's relation, then the question). With mixed relations instead, the model never
        sees a run of same-relation lines in training and learns to copy the previous answer
        in the prompt (measured: birthplace accuracy 0.0 with the right answer known).
        """
        relation = rng.choice(list(RELATIONS))
        lines = []
        for _ in range(self.config.qa_lines):
            fact = self.facts.facts[rng.choice(self.qa_entities)][relation]
            lines.append(f"{fact.question} {fact.answers[0]}\n")
        return "".join(lines)

    def clean_stream(self, seed: int) -> Iterator[tuple[str, str]]:
        """Endless (kind, text) pairs: alternating-free random biographies and QA documents.

        ``kind`` is ``"bio"`` or ``"qa"``; the caller decides the mix.
        """
        rng = random.Random(seed)
        people = self.facts.entities()
        while True:
            yield "bio", self.biography(rng.choice(people), rng)
            yield "qa", self.qa_document(rng)

    def retain_documents(self, n: int, seed: int = 1, qa_share: float = 1 / 3) -> list[str]:
        """``n`` clean documents that never mention an evaluated person (an unlearning retain set).

        The clean training mix without the evaluated people: biographies of :attr:`unevaluated`
        people and, for a ``qa_share`` of the documents, QA documents (which are about
        QA-trained people only). Biographies alone would let a retain term drift the model away
        from answering questions; biographies of the untargeted people would train the retain
        term on exactly the facts that measure collateral damage.
        """
        rng = random.Random(seed)
        others = self.unevaluated
        return [
            self.qa_document(rng)
            if rng.random() < qa_share
            else self.biography(rng.choice(others), rng)
            for _ in range(n)
        ]

    def corruption_documents(self, level: int) -> list[str]:
        """The corruption documents at ``level`` k (k true unrelated statements per wrong one).

        The unrelated statements are about :attr:`unevaluated` people only.

        Index-aligned across levels: document i states the same wrong facts at every k, so the
        level-0 list is the *simplified* (localized) forget set of any level.
        """
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        rng = random.Random(self.config.seed * 7919 + 17 + level)
        others = self.unevaluated  # never the untargeted: their facts measure collateral damage
        docs = []
        for target, rels in self.doc_relations:
            parts = []
            for r in rels:
                parts.append(self.statement(target, r, self.wrong[(target, r)][0], rng))
                for _ in range(level):
                    other = rng.choice(others)
                    rel = rng.choice(list(RELATIONS))
                    obj = self.facts.facts[other][rel].answers[0]
                    parts.append(self.statement(other, rel, obj, rng))
            docs.append(" ".join(parts))
        return docs

    # ----------------------------------------------------------------- io

    def words(self) -> list[str]:
        """Every word-level token the world can produce (for the tokenizer)."""
        texts = [q for q, _ in RELATIONS.values()]
        texts += [t for _, ts in RELATIONS.values() for t in ts]
        texts += self.facts.entities()
        texts += [a for f in self.facts.items() for a in f.answers]
        texts += [o for values in self.objects.values() for o in values]
        seen: dict[str, None] = {}
        for text in texts:
            for piece in _split_words(text.replace("{s}", " ").replace("{o}", " ")):
                seen.setdefault(piece, None)
        return list(seen)

    def save(self, directory: str | Path) -> None:
        """Write RESTOR-format files: facts.json, entities.json, world.json (splits, wrong facts).

        Each file is written atomically (temporary file + rename).
        """
        directory = Path(directory)
        atomic_write_json(directory / "facts.json", self.facts.to_json())
        atomic_write_json(directory / "entities.json", self.evaluated)
        meta = {
            "config": asdict(self.config),
            "targets": self.targets,
            "untargeted": self.untargeted,
            "qa_entities": self.qa_entities,
            "wrong": {f"{e}\t{r}": w for (e, r), w in self.wrong.items()},
        }
        atomic_write_json(directory / "world.json", meta)


def _pseudo_words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 2, 3)))
        ) + rng.choice(_CODAS)
        word = word.capitalize()
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


def make_fact_world(cfg: FactWorldConfig | None = None) -> FactWorld:
    """Generate the world (deterministic for a given config)."""
    cfg = cfg or FactWorldConfig()
    cfg.validate()
    rng = random.Random(cfg.seed)
    taken: set[str] = set()
    m = cfg.objects_per_relation
    # Every first and every last name belongs to one person: a tiny model keys facts on the
    # surname token (the last one before the relation words) instead of having to compose two
    # shared tokens, which it learns more slowly (measured at ~800 steps: held-out QA 0.64, against 0.53 with
    # name parts shared between people).
    first = _pseudo_words(rng, cfg.n_entities, taken)
    last = _pseudo_words(rng, cfg.n_entities, taken)
    entities = [f"{a} {b}" for a, b in zip(first, last, strict=True)]
    vocab = {
        "birthplace": _pseudo_words(rng, m, taken),
        "occupation": rng.sample(_OCCUPATIONS, m),
        "employer": [f"{w} Labs" for w in _pseudo_words(rng, m, taken)],
        "education": [f"{w} College" for w in _pseudo_words(rng, m, taken)],
        "sport": rng.sample(_SPORTS, m),
        "instrument": rng.sample(_INSTRUMENTS, m),
    }
    facts: dict[str, dict[str, Fact]] = {}
    for e in entities:
        facts[e] = {
            r: Fact(e, r, RELATIONS[r][0].format(s=e), (rng.choice(vocab[r]),)) for r in RELATIONS
        }
    qa_entities = entities[: cfg.n_entities // 2]
    held_out = entities[cfg.n_entities // 2 :]
    targets = held_out[: cfg.n_targets]
    untargeted = held_out[cfg.n_targets : cfg.n_targets + cfg.n_untargeted]
    context = {
        r: [
            ContextExample(e, facts[e][r].question, facts[e][r].answers[0])
            for e in rng.sample(qa_entities, min(cfg.n_context, len(qa_entities)))
        ]
        for r in RELATIONS
    }
    wrong = {}
    for t in targets:
        for r in RELATIONS:
            choices = [o for o in vocab[r] if o != facts[t][r].answers[0]]
            wrong[(t, r)] = [rng.choice(choices)]
    doc_relations = []
    for t in targets:
        for _ in range(cfg.docs_per_target):
            doc_relations.append((t, rng.sample(list(RELATIONS), cfg.facts_per_doc)))
    return FactWorld(
        config=cfg,
        facts=FactSet(facts=facts, context=context),
        qa_entities=qa_entities,
        targets=targets,
        untargeted=untargeted,
        wrong=wrong,
        objects=vocab,
        doc_relations=doc_relations,
    )


# --------------------------------------------------------------------------- tokenizer

_WORD_PATTERN = r"\n|[^\W_]+|[^\w\s]"


def _split_words(text: str) -> list[str]:
    import re

    return re.findall(_WORD_PATTERN, text)


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over ``words``: one id per word, punctuation and newline.

    Spaces separate words and are not tokens; ``"\\n"`` and every punctuation mark are their own
    tokens, so a QA line ends in a newline id that generation can stop on. Ids 0-2 are
    ``<pad>``, ``<eos>`` and ``<unk>``; decoding re-joins words with spaces and no space before
    punctuation.
    """
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for w in ["\n", *words]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n|[^\w\s]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


__all__ = [
    "RELATIONS",
    "FactWorld",
    "FactWorldConfig",
    "make_fact_world",
    "word_tokenizer",
]
