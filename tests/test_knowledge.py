"""Knowledge metrics: alias matching, recovery, few-shot prompts, greedy answers, logit analysis."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from unmemorize.benchmarks.restor.facts import ContextExample, Fact, FactSet
from unmemorize.benchmarks.restor.knowledge import (
    alias_match,
    answer_logprob,
    check_encodable,
    few_shot_prompt,
    generate_answers,
    logit_analysis,
    normalize_answer,
    qa_accuracy,
    random_candidates,
    recovery,
)

from .zoo import V, make_model

# --- scoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "norm"),
    [
        ("The Beatles", "beatles"),
        ("  PARIS,  France. ", "paris france"),
        ("Kaká", "kaka"),
        ("U.S. Army", "us army"),
        ("Saint-Denis", "saint denis"),
        ("an apple a day", "apple day"),
        ("Théâtre", "theatre"),
        ("?!", ""),
    ],
)
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


@pytest.mark.parametrize(
    ("pred", "answers", "ok"),
    [
        ("paris", ["Paris"], True),  # case
        ("Paris.", ["Paris"], True),  # punctuation
        ("the United Kingdom", ["United Kingdom"], True),  # articles
        ("A musician", ["musician"], True),
        ("Sao Paulo", ["São Paulo"], True),  # accents
        ("in Paris, France", ["Paris"], True),  # whole-word run inside the prediction
        ("Parish", ["Paris"], False),  # not a whole word
        ("Paris", ["Paris, France"], False),  # the answer must be inside the prediction
        ("New York City", ["York"], True),
        ("Rome", ["Paris", "Lyon"], False),
        ("Lyon", ["Paris", "Lyon"], True),  # any accepted answer
        ("", ["Paris"], False),  # empty prediction
        ("the", ["The"], False),  # normalizes to nothing
        ("anything", ["?"], False),  # answers that normalize to nothing are ignored
    ],
)
def test_alias_match(pred, answers, ok):
    assert alias_match(pred, answers) is ok


def test_recovery_arithmetic():
    assert recovery(0.6, 0.4, 0.5) == pytest.approx(0.5)
    assert recovery(0.6, 0.4, 0.6) == pytest.approx(1.0)
    assert recovery(0.6, 0.4, 0.4) == pytest.approx(0.0)
    assert recovery(0.6, 0.4, 0.3) == pytest.approx(-0.5)  # unlearning made it worse
    assert recovery(0.6, 0.4, 0.7) == pytest.approx(1.5)  # better than clean
    assert math.isnan(recovery(0.5, 0.5, 0.7))


# --- prompts ---------------------------------------------------------------------------------


def _ex(entity: str, answer: str) -> ContextExample:
    return ContextExample(entity, f"What is the place of birth of {entity}?", answer)


def test_few_shot_prompt_exact():
    fact = Fact("Bob Marley", "P19", "What is the place of birth of Bob Marley?", ("Nine Mile",))
    ctx = [_ex("Ann", "Oslo"), _ex("Bob Marley", "Nine Mile"), _ex("Cy", "Rome"), _ex("Di", "Lima")]
    assert few_shot_prompt(fact, ctx, n_shots=2) == (
        "What is the place of birth of Ann? Oslo\n"
        "What is the place of birth of Cy? Rome\n"
        "What is the place of birth of Bob Marley?"
    )
    # Fewer examples than asked for: all others are used; none at all: just the question.
    assert few_shot_prompt(fact, ctx, n_shots=5).count("\n") == 3
    assert few_shot_prompt(fact, [], n_shots=5) == fact.question


# --- a tiny word-level model -----------------------------------------------------------------

WORDS = ["[BOS]", "[EOS]", "[PAD]", "[UNK]", "\n", "?", ".", ","]
WORDS += "who is the father of what place birth in a Ada Bo Cy Di Ed Fay".split()
WORDS += "Paris Rome Oslo Lima Kyiv Bern Riga Baku".split()
EOS_ID, NL_ID = 1, 4


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a newline token and exactly V ids (the zoo model's vocab)."""
    vocab = WORDS + [f"w{i}" for i in range(V - len(WORDS))]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="removed"),
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    inner.decoder = decoders.WordPiece(cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=inner,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )


PROMPTS = [
    "what is the place of birth of Ada? Paris\nwhat is the place of birth of Bo?",
    "who is the father of Cy?",
    "Di",
    "what is Ed? Rome\nwhat is Fay?",
    "who is the father of Ada? Bo\nwho is the father of Di? Ed\nwho is the father of Fay?",
    "Oslo Lima Kyiv",
    "in a place",
]


def _greedy_reference(model, tok, prompt: str, max_new: int) -> tuple[str, str]:
    """One prompt, no padding, no generate(): argmax step by step, cut at eos / newline."""
    ids = tok(prompt)["input_ids"]
    new: list[int] = []
    for _ in range(max_new):
        logits = model(torch.tensor([ids + new])).logits[0, -1]
        new.append(int(logits.argmax()))
    stop = "eos" if EOS_ID in new else ""
    if EOS_ID in new:
        new = new[: new.index(EOS_ID)]
    if NL_ID in new:
        stop = stop or "newline"
        new = new[: new.index(NL_ID)]
    return tok.decode(new, skip_special_tokens=True).strip(), stop


@pytest.mark.parametrize(("kind", "seed"), [("gpt2", 4), ("llama", 2)])
@torch.no_grad()
def test_generate_answers_batched_matches_reference(tok, kind, seed):
    """Left-padded batches == one prompt at a time == a hand-written greedy loop."""
    model = make_model(kind, positions=64, seed=seed)
    ref = [_greedy_reference(model, tok, p, 8) for p in PROMPTS]
    stops = {stop for _, stop in ref}
    assert {"newline", "eos", ""} <= stops, stops  # these seeds exercise both cuts
    batched = generate_answers(model, tok, PROMPTS, max_new_tokens=8, batch_size=4)
    single = [generate_answers(model, tok, [p], max_new_tokens=8)[0] for p in PROMPTS]
    assert batched == single == [text for text, _ in ref]
    assert tok.padding_side == "right"  # never changed


def test_generate_answers_restores_train_mode(tok):
    model = make_model("llama", positions=64).train()
    out = generate_answers(model, tok, PROMPTS[:3], max_new_tokens=4)
    assert len(out) == 3 and model.training


@torch.no_grad()
def test_answer_logprob_equals_hand_computation(tok):
    model = make_model("gpt_neox", positions=64, seed=2)
    prompt = PROMPTS[0]
    cands = ["Paris", "Rome Oslo", "a Kyiv in Bern", ""]
    got = answer_logprob(model, tok, prompt, cands, batch_size=2)
    head = tok(prompt)["input_ids"]
    for cand, score in zip(cands[:3], got, strict=False):
        tail = tok(" " + cand, add_special_tokens=False)["input_ids"]
        assert len(tail) == len(cand.split())
        ids = torch.tensor([head + tail])
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
        want = sum(float(logp[len(head) + j - 1, t]) for j, t in enumerate(tail)) / len(tail)
        assert score == pytest.approx(want, abs=1e-5)
    assert math.isnan(got[3])  # no tokens


# --- QA accuracy and logit analysis ----------------------------------------------------------


def _world() -> FactSet:
    def fact(e: str, rel: str, *ans: str) -> Fact:
        q = (
            f"who is the father of {e}?"
            if rel == "father"
            else f"what is the place of birth of {e}?"
        )
        return Fact(e, rel, q, ans)

    facts = {
        "Ada": {"birth": fact("Ada", "birth", "Paris"), "father": fact("Ada", "father", "Bo")},
        "Cy": {"birth": fact("Cy", "birth", "Rome", "Oslo"), "father": fact("Cy", "father", "Ed")},
        "Di": {"birth": fact("Di", "birth", "Lima")},
        "Fay": {"birth": fact("Fay", "birth", "Kyiv"), "father": fact("Fay", "father", "Di")},
        "Ed": {"birth": fact("Ed", "birth", "Bern")},
        "Bo": {"birth": fact("Bo", "birth", "Riga")},
    }
    context = {
        "birth": [
            ContextExample(e, f"what is the place of birth of {e}?", a)
            for e, a in [("Bo", "Riga"), ("Ed", "Bern"), ("Ada", "Paris")]
        ],
        "father": [ContextExample("Ada", "who is the father of Ada?", "Bo")],
    }
    return FactSet(facts, context)


def test_qa_accuracy_records_and_scorer_hook(tok):
    model = make_model("gpt2", positions=64, seed=4)
    world = _world()
    items = world.items(["Ada", "Cy"])
    res = qa_accuracy(model, tok, items, world.context, max_new_tokens=4)
    prompts = [few_shot_prompt(f, world.context[f.relation]) for f in items]
    preds = generate_answers(model, tok, prompts, max_new_tokens=4)
    assert res.n == 4 and [r["prediction"] for r in res.records] == preds
    assert res.n_correct == sum(
        alias_match(p, f.answers) for p, f in zip(preds, items, strict=True)
    )
    assert res.records[2] | {"prediction": None, "correct": None} == {
        "entity": "Cy",
        "relation": "birth",
        "question": "what is the place of birth of Cy?",
        "prediction": None,
        "answers": ["Rome", "Oslo"],
        "correct": None,
    }
    # The pluggable scorer decides.
    calls = []

    def judge(pred, answers):
        calls.append((pred, tuple(answers)))
        return answers[0] in ("Paris", "Ed")

    res2 = qa_accuracy(model, tok, items, world.context, scorer=judge, max_new_tokens=4)
    assert res2.accuracy == 0.5 and res2.n_correct == 2 and len(calls) == 4
    with pytest.raises(ValueError, match="no facts"):
        qa_accuracy(model, tok, [], world.context)


def test_random_candidates_exclusion_and_determinism():
    world = _world()
    cy = world.facts["Cy"]["birth"]
    pool = world.items()
    rand = random_candidates(cy, pool, [*cy.answers, "lima"], n=3, seed=0)
    assert len(rand) == 3 and len(set(rand)) == 3
    # Same relation, other entities, never a correct or corrupted answer (normalized).
    assert set(rand) <= {"Paris", "Kyiv", "Bern", "Riga"}
    assert random_candidates(cy, pool, [*cy.answers, "lima"], n=3, seed=0) == rand
    seeds = {tuple(random_candidates(cy, pool, cy.answers, n=2, seed=s)) for s in range(20)}
    assert len(seeds) > 1  # the seed matters
    everything = random_candidates(cy, pool, [*cy.answers, "Lima"], n=10, seed=0)
    assert sorted(everything) == ["Bern", "Kyiv", "Paris", "Riga"]  # capped at what exists


@torch.no_grad()
def test_logit_analysis_categories(tok):
    model = make_model("gpt2", positions=64, seed=3)
    world = _world()
    items = world.items(["Ada", "Cy", "Fay"])
    corrupted = {("Ada", "birth"): ["Rome"], ("Cy", "father"): ["Fay", "Bo"]}
    out = logit_analysis(
        model, tok, items, world.context, corrupted, pool=world, n_random=2, seed=1
    )
    assert out["n_facts"] == 6 and out["n_corrupted"] == 2 and out["n_random"] == 6
    by_key = {(r["entity"], r["relation"]): r for r in out["per_fact"]}
    ada = by_key[("Ada", "birth")]
    assert "Rome" not in ada["random_answers"] and "Paris" not in ada["random_answers"]
    assert by_key[("Cy", "father")]["random_answers"] == ["Di"]  # Ed correct; Fay, Bo corrupted
    assert by_key[("Fay", "birth")]["corrupted"] is None
    # Each category mean is the mean of answer_logprob scores under the fact's prompt.
    prompt = few_shot_prompt(items[0], world.context["birth"])
    scores = answer_logprob(model, tok, prompt, ["Paris", "Rome", *ada["random_answers"]])
    assert ada["correct"] == pytest.approx(scores[0])
    assert ada["corrupted"] == pytest.approx(scores[1])
    assert ada["random"] == pytest.approx(sum(scores[2:]) / 2)
    corr = [r["corrupted"] for r in out["per_fact"] if r["corrupted"] is not None]
    assert out["corrupted"] == pytest.approx(sum(corr) / 2)
    again = logit_analysis(
        model, tok, items, world.context, corrupted, pool=world, n_random=2, seed=1
    )
    assert again == out


def test_check_encodable(tok):
    check_encodable(tok, ["what is the place of birth of Ada? Paris"], "prompt")  # fine
    with pytest.raises(ValueError, match=r"QA prompt: .*'Zanzibar' is not in its vocabulary"):
        check_encodable(tok, ["who is Ada?", "who is Zanzibar?"], "QA prompt")
    world = _world()
    bad = Fact("Ada", "birth", "where was Ada born?", ("Paris",))
    with pytest.raises(ValueError, match="'where' is not in its vocabulary"):
        qa_accuracy(make_model("gpt2", positions=64), tok, [bad], world.context)


def test_check_encodable_without_unk_token():
    """Byte-level BPE has no unknown token: everything is encodable (and GPT-2's unk = eos)."""

    class NoUnk:
        unk_token_id = None

    check_encodable(NoUnk(), ["anything"], "prompt")
