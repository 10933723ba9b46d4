"""RESTOR facts: loaders on the real files, round trips, bad input, and target detection."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unmemorize.benchmarks.restor.facts import (
    ContextExample,
    Fact,
    FactSet,
    FactsFormatError,
    doc_subjects,
    fact_stats,
    load_docs,
    load_entities,
    load_facts,
)

RESTOR = Path(__file__).resolve().parents[2] / "shared/data/restor"
TARGETS = {
    "Aaron Burr",
    "Bob Marley",
    "Michael Douglas",
    "Sage Stallone",
    "Paul Anka",
    "Bobby Fischer",
    "Bastian Schweinsteiger",
    "Suthida",
    "Thomas Piketty",
    "Mihai Eminescu",
}


@pytest.fixture(scope="module")
def restor() -> Path:
    if not (RESTOR / "facts.json").exists():
        pytest.skip(f"real RESTOR data not found at {RESTOR}")
    return RESTOR


@pytest.fixture(scope="module")
def real(restor):
    docs = {name: load_docs(restor / name) for name in ("mix_a0.json", "mix_a1.json")}
    return load_facts(restor / "facts.json"), load_entities(restor / "entities.json"), docs


# --- the real files --------------------------------------------------------------------------


def test_real_counts_and_targets(real):
    facts, entities, docs = real
    assert len(entities) == 50
    stats = fact_stats(facts, entities, docs)
    assert (stats["entities"], stats["facts"], stats["relations"]) == (50, 1051, 41)
    assert (stats["all_entities"], stats["all_facts"]) == (468, 5269)
    assert (stats["context_relations"], stats["context_examples"]) == (41, 410)
    a0, a1 = stats["docs"]["mix_a0.json"], stats["docs"]["mix_a1.json"]
    for mix, n_none in ((a0, 3), (a1, 0)):
        assert mix["docs"] == 3000
        assert set(mix["target_entities"]) == TARGETS and mix["n_target_entities"] == 10
        assert mix["docs_no_entity"] == n_none
        assert sum(mix["docs_per_target"].values()) == 3000 - n_none
        assert mix["target_facts"] == 198
    # The documents come in blocks of 300 per target, Aaron Burr first.
    assert a1["target_entities"][0] == "Aaron Burr"
    assert set(a1["docs_per_target"].values()) == {300}
    json.dumps(stats)  # JSON-able


def test_real_counts_without_entity_list(real):
    """Without entities.json, counts are over all of facts.json and targets come out the same."""
    facts, _, docs = real
    stats = fact_stats(facts, None, docs)
    assert (stats["entities"], stats["facts"], stats["relations"]) == (468, 5269, 41)
    for name in docs:
        assert set(stats["docs"][name]["target_entities"]) == TARGETS


def test_real_subjects_ignore_passing_mentions(real):
    facts, entities, docs = real
    a1 = docs["mix_a1.json"]
    # mix_a1 mixes in unrelated facts; some name Napoleon, who is a known entity but no target.
    napoleon = [i for i, text in enumerate(a1) if "Napoleon" in text]
    assert napoleon
    subjects = doc_subjects(a1, entities)
    assert all(subjects[i] in TARGETS for i in napoleon)
    # The three mix_a0 documents about made-up people ("Bob Williams", ...) have no subject.
    none = [i for i, s in enumerate(doc_subjects(docs["mix_a0.json"], facts.entities())) if not s]
    texts = [docs["mix_a0.json"][i][:12] for i in none]
    assert texts == ["Bob Williams", "Ethan Miller", "Bastian John"]


def test_real_round_trip(restor, real, tmp_path):
    facts = real[0]
    original = json.loads((restor / "facts.json").read_text(encoding="utf-8"))
    assert facts.to_json() == original
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts.to_json()), encoding="utf-8")
    assert load_facts(path) == facts
    first = facts.facts["Suthida"]["P1412"]
    assert first == Fact(
        "Suthida",
        "P1412",
        "What languages does Suthida speak, write, or sign?",
        ("English", "Thai", "Southern Thai"),
    )


# --- a small fact set ------------------------------------------------------------------------


def _small() -> dict:
    return {
        "dset": {
            "Ann Lee": {
                "P19": {"question": "Where was Ann Lee born?", "answers": ["Oslo"]},
                "P22": {"question": "Who is Ann Lee's father?", "answers": ["Bo Lee", "Bo"]},
            },
            "Cy Dunn": {"P19": {"question": "Where was Cy Dunn born?", "answers": ["Rome"]}},
        },
        "context": {
            "P19": [{"question": "Where was Di born?", "answer": "Lima", "entity": "Di"}],
            "P22": [],
        },
    }


def test_factset_accessors_and_round_trip():
    fs = FactSet.from_json(_small())
    assert fs.entities() == ["Ann Lee", "Cy Dunn"]
    assert fs.relations() == ["P19", "P22"] and fs.relations(["Cy Dunn"]) == ["P19"]
    assert [f.relation for f in fs.items(["Cy Dunn", "Ann Lee"])] == ["P19", "P19", "P22"]
    assert fs.n_facts() == 3 and fs.n_facts(["Ann Lee"]) == 2
    assert fs.context["P19"] == [ContextExample("Di", "Where was Di born?", "Lima")]
    assert fs.facts["Ann Lee"]["P22"].answers == ("Bo Lee", "Bo")
    assert fs.to_json() == _small()
    with pytest.raises(KeyError, match="Zed"):
        fs.items(["Zed"])


def _broken(path: list, value=None, delete: bool = False) -> dict:
    obj = _small()
    node = obj
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1, 2], "top level must be an object"),
        (_broken(["dset"], delete=True), 'facts.json: no "dset" key'),
        (_broken(["context"], delete=True), 'facts.json: no "context" key'),
        (_broken(["dset"], {}), '"dset" must be a non-empty object'),
        (_broken(["dset", "Ann Lee"], ["x"]), 'dset["Ann Lee"] must be an object'),
        (
            _broken(["dset", "Ann Lee", "P19", "answers"], delete=True),
            'facts.json: dset["Ann Lee"]["P19"] has no "answers"',
        ),
        (
            _broken(["dset", "Cy Dunn", "P19", "question"], delete=True),
            'dset["Cy Dunn"]["P19"] has no "question"',
        ),
        (
            _broken(["dset", "Ann Lee", "P22", "answers"], []),
            'dset["Ann Lee"]["P22"]["answers"] is empty',
        ),
        (_broken(["dset", "Ann Lee", "P22", "answers"], "Bo"), "must be a list of strings"),
        (_broken(["dset", "Ann Lee", "P22", "answers"], ["Bo", " "]), "contains an empty string"),
        (_broken(["dset", "Ann Lee", "P22"], "Bo"), 'dset["Ann Lee"]["P22"] must be an object'),
        (_broken(["context", "P19"], {"a": 1}), 'context["P19"] must be a list'),
        (
            _broken(["context", "P19", 0, "entity"], delete=True),
            'context["P19"][0] has no "entity"',
        ),
        (_broken(["context", "P19", 0, "answer"], 3), 'context["P19"][0]["answer"] must be'),
    ],
)
def test_facts_format_errors(tmp_path, obj, message):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(FactsFormatError, match=re.escape(message)):
        load_facts(path)


def test_invalid_json_names_file_and_place(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text('{"dset": {', encoding="utf-8")
    with pytest.raises(FactsFormatError, match=r"facts.json: not valid JSON \(line 1, column"):
        load_facts(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"Ann Lee": 1}, "must be a non-empty JSON list of names"),
        ([], "must be a non-empty JSON list of names"),
        (["Ann Lee", 3], r"item \[1\] must be a non-empty string"),
        (["Ann Lee", "Ann Lee"], '"Ann Lee" is listed twice'),
    ],
)
def test_entities_format_errors(tmp_path, content, message):
    path = tmp_path / "entities.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(FactsFormatError, match=f"entities.json: {message}"):
        load_entities(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.json", {"text": "x"}, r'd.json: must be a JSON list of \{"text": str\}'),
        ("d.json", [{"text": "a"}, {"body": "b"}], r'd.json: document \[1\] has no "text"'),
        ("d.json", [{"text": ""}], r'document \[0\] "text" must be a non-empty string'),
        ("d.json", [], "d.json: holds no documents"),
        # line 2 is blank: the bad document is on line 3
        ("d.jsonl", '{"text": "a"}\n\n{"txt": "b"}\n', 'd.jsonl: document line 3 has no "text"'),
        ("d.jsonl", '{"text": "a"}\n{oops\n', "d.jsonl:2: not valid JSON"),
    ],
)
def test_docs_format_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(FactsFormatError, match=message):
        load_docs(path)


def test_load_docs_json_and_jsonl(tmp_path):
    texts = ["Ann Lee was born in Rome.", "Cy Dunn plays chess."]
    (tmp_path / "d.json").write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "d.jsonl").write_text(lines, encoding="utf-8")
    assert load_docs(tmp_path / "d.json") == texts == load_docs(tmp_path / "d.jsonl")


# --- which entity a document is about --------------------------------------------------------

KNOWN = [
    "Ann Lee",
    "Cy Dunn",
    "Napoleon",
    "Stephen Miller (political advisor)",
    "Henry VII of England",
]


@pytest.mark.parametrize(
    ("text", "subject"),
    [
        ("Ann Lee was born in Rome. She admired Napoleon.", "Ann Lee"),
        ("Born in Rome, Ann Lee met Cy Dunn.", "Ann Lee"),  # earliest mention wins
        ("Bob Ray was born in Rome. Cy Dunn is his father.", None),  # passing mention only
        ("Dunn was born in Rome.", "Cy Dunn"),  # stand-alone surname fallback
        ("Ethan Dunn was born in Rome.", None),  # someone else's surname
        ("Dunn Smith was born in Rome.", None),  # a given name, not the surname
        ("Stephen Miller wrote a book.", "Stephen Miller (political advisor)"),  # disambiguator
        ("Ethan Miller was born in England.", None),  # no surname for titles like Henry VII
        ("Dr. Ray met Cy Dunn in Rome.", "Cy Dunn"),  # "Dr." does not end the sentence
        ("Ann Leeds was born in Rome.", None),  # whole words only
        ("Napoleon visited Rome.", "Napoleon"),
    ],
)
def test_doc_subject_rule(text, subject):
    assert doc_subjects([text], KNOWN) == [subject]


def test_doc_subjects_require(tmp_path):
    docs = ["Ann Lee was born in Rome.", "Bob Ray is tall. Later he met Cy Dunn."]
    assert doc_subjects(docs, KNOWN) == ["Ann Lee", None]
    with pytest.raises(FactsFormatError, match=r"mix.json: document \[1\] names no known entity"):
        doc_subjects(docs, KNOWN, require=True, source="mix.json")


def test_fact_stats_small():
    fs = FactSet.from_json(_small())
    docs = {"mix.json": ["Cy Dunn is from Oslo.", "Cy Dunn met Ann Lee.", "Zed Ray is tall."]}
    stats = fact_stats(fs, ["Cy Dunn"], docs)
    assert (stats["entities"], stats["facts"], stats["relations"]) == (1, 1, 1)
    assert stats["docs"]["mix.json"] == {
        "docs": 3,
        "target_entities": ["Cy Dunn"],
        "n_target_entities": 1,
        "docs_per_target": {"Cy Dunn": 2},
        "docs_no_entity": 1,
        "target_facts": 1,
    }
    # Known entities default to every entity of the facts.
    assert fact_stats(fs, None, docs)["docs"]["mix.json"]["target_facts"] == 1
    with pytest.raises(FactsFormatError, match="have no facts.*'Zed'"):
        fact_stats(fs, ["Cy Dunn", "Zed"], docs)
