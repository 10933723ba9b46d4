"""Factual knowledge of a causal LM: few-shot QA accuracy and logit analysis (RESTOR).

RESTOR (Rezaei et al., arXiv 2411.00204) asks a base LM each fact's question after 5 in-context
examples of the same relation and judges the answer. The paper samples answers and has
gpt-3.5-turbo judge them; here decoding is greedy and scoring is a deterministic alias match
(:func:`alias_match`), with a pluggable :data:`Scorer` for anything smarter. This is stricter than
the paper's semantic judge ("military personnel" vs "military leader" counts as wrong here).

The logit analysis scores, under the same prompt, the mean per-token log-probability of the
correct answers, the corrupted (wrong) answers the model was fed, and random answers of the same
relation for other entities: it shows where probability mass goes after unlearning.

Works with any Hugging Face causal LM and tokenizer (word-level or BPE); shapes: B batch rows,
T tokens, V vocabulary.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ...metrics.losses import target_logprobs
from .facts import ContextExample, Fact, FactSet

#: (prediction, accepted answers) -> correct?
Scorer = Callable[[str, Sequence[str]], bool]

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


@lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """Canonical form of an answer for matching.

    Case-folded (Unicode compatibility caseless form, so "Straße" = "STRASSE"); accents removed
    (combining marks dropped); apostrophes and periods deleted ("U.S." -> "us", "O'Neil" ->
    "oneil"); every other punctuation or symbol character becomes a space ("Saint-Denis" ->
    "saint denis"); the articles a/an/the dropped; whitespace squeezed.
    """
    # Unicode's compatibility caseless match (D145): NFKD(casefold(NFKD(casefold(NFD(x)))))
    text = unicodedata.normalize("NFD", text).casefold()
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Mn":
            continue  # combining accent
        if ch in "'.’`":
            continue
        chars.append(" " if cat[0] in "PS" else ch)
    text = "".join(chars)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def alias_match(prediction: str, answers: Sequence[str]) -> bool:
    """The default scorer: normalized exact or whole-word match against any accepted answer.

    Both sides are normalized with :func:`normalize_answer`. The prediction is correct if it
    equals a normalized answer, or a normalized answer occurs in it as a whole-word run ("in
    Paris" matches "Paris"; "Parish" does not). An empty prediction is never correct, and answers
    that normalize to nothing are ignored.
    """
    pred = normalize_answer(prediction)
    if not pred:
        return False
    padded = f" {pred} "
    for answer in answers:
        norm = normalize_answer(answer)
        if norm and (norm == pred or f" {norm} " in padded):
            return True
    return False


def few_shot_prompt(fact: Fact, context: Sequence[ContextExample], n_shots: int = 5) -> str:
    """RESTOR's prompt: ``n_shots`` examples of the relation, then the question.

    The examples are the first ``n_shots`` of ``context`` about another entity than the fact's,
    each rendered ``"{question} {answer}\\n"``; the fact's question follows with no trailing
    space or newline. Fewer examples are used when fewer exist.
    """
    shots = [ex for ex in context if ex.entity != fact.entity][:n_shots]
    return "".join(f"{ex.question} {ex.answer}\n" for ex in shots) + fact.question


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer, model) -> int:
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, model.config.eos_token_id):
        if isinstance(cand, list):
            cand = cand[0] if cand else None
        if cand is not None:
            return int(cand)
    return 0  # masked out everywhere, so any id works


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for cfg in (model.config, getattr(model, "generation_config", None)):
        eos = getattr(cfg, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos])
    return {int(i) for i in ids if i is not None}


class _NewlineStop(StoppingCriteria):
    """Per-row stop once a generated token contains a newline (answers are one line)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, bool] = {}

    def has_newline(self, token: int) -> bool:
        if token not in self.cache:
            self.cache[token] = "\n" in self.tokenizer.decode([token])
        return self.cache[token]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].tolist()  # [B]
        return torch.tensor([self.has_newline(t) for t in last], device=input_ids.device)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy one-line answers to ``prompts``.

    Prompts are encoded with the tokenizer's special tokens (e.g. a BOS), sorted by length and
    batched with left padding and an attention mask (padded by hand, so the tokenizer is never
    modified; pad = the tokenizer's pad, else eos). Only the new tokens are decoded; the answer is
    cut at the first eos and the first newline, and stripped. Generation stops early once every
    row has produced a newline.

    Returns:
        One answer per prompt, in order.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer, model)
    eos = _eos_ids(tokenizer, model)
    stop = StoppingCriteriaList([_NewlineStop(tokenizer)])
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    try:
        for start in tqdm(starts, desc="generate", disable=not progress):
            idx = order[start : start + batch_size]
            ids, mask = _left_pad([encoded[i] for i in idx], pad_id, device)
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                stopping_criteria=stop,
                # Silence sampling defaults a model's generation_config may carry (temperature...).
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = gen[:, ids.shape[1] :].tolist()  # [B, new tokens]
            for i, row in zip(idx, new, strict=True):
                cut = next((j for j, t in enumerate(row) if t in eos), len(row))
                text = tokenizer.decode(row[:cut], skip_special_tokens=True)
                out[i] = text.split("\n", 1)[0].strip()
    finally:
        model.train(was_training)
    return out


@dataclass
class QAResult:
    """Few-shot QA accuracy and one record per fact.

    Attributes:
        accuracy: n_correct / n.
        n: facts asked.
        n_correct: facts answered correctly.
        records: per fact: entity, relation, question, prediction, answers, correct.
    """

    accuracy: float
    n: int
    n_correct: int
    records: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "n": self.n, "n_correct": self.n_correct}


def qa_accuracy(
    model,
    tokenizer,
    facts: Sequence[Fact],
    context: Mapping[str, Sequence[ContextExample]],
    *,
    scorer: Scorer = alias_match,
    n_shots: int = 5,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    progress: bool = False,
) -> QAResult:
    """Ask every fact's question few-shot (:func:`few_shot_prompt`), greedily, and score it.

    Raises:
        ValueError: no facts, or the tokenizer cannot encode a prompt (:func:`check_encodable`).
    """
    if not facts:
        raise ValueError("qa_accuracy: no facts to ask")
    prompts = [few_shot_prompt(f, context.get(f.relation, ()), n_shots) for f in facts]
    check_encodable(tokenizer, prompts, "QA prompt")
    preds = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    records = []
    for fact, pred in zip(facts, preds, strict=True):
        ok = bool(scorer(pred, fact.answers))
        records.append(
            {
                "entity": fact.entity,
                "relation": fact.relation,
                "question": fact.question,
                "prediction": pred,
                "answers": list(fact.answers),
                "correct": ok,
            }
        )
    n_correct = sum(r["correct"] for r in records)
    return QAResult(n_correct / len(records), len(records), n_correct, records)


def _forward_logits(model, ids: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions ([B, keep, V]), computing no others when possible."""
    try:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep
        return model(input_ids=ids, attention_mask=mask).logits[:, -keep:]


@torch.no_grad()
def answer_logprob(
    model, tokenizer, prompt: str, candidates: Sequence[str], batch_size: int = 64
) -> list[float]:
    """Mean per-token log-probability of each candidate answer after ``prompt`` (RESTOR rule).

    The sequence is ``tokenizer(prompt)`` (special tokens included) followed by the tokens of
    ``" " + candidate`` encoded without special tokens; the score is the mean over the candidate's
    tokens of log p(token | everything before it). A candidate with no tokens scores nan.
    """
    was_training = model.training
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer, model)
    head = tokenizer(prompt)["input_ids"]
    p = len(head)
    tails = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in candidates]
    scores: list[float] = []
    try:
        for start in range(0, len(tails), batch_size):
            chunk = tails[start : start + batch_size]
            width = max(1, max(len(t) for t in chunk))
            ids = torch.full((len(chunk), p + width), pad_id, dtype=torch.long)  # [B, T]
            mask = torch.zeros_like(ids)
            ans = torch.zeros(
                (len(chunk), width), dtype=torch.bool
            )  # [B, width] real answer tokens
            for i, tail in enumerate(chunk):
                ids[i, : p + len(tail)] = torch.tensor(head + tail)
                mask[i, : p + len(tail)] = 1
                ans[i, : len(tail)] = True
            ids, mask, ans = ids.to(device), mask.to(device), ans.to(device)
            # Right padding keeps the shared prompt at the same positions, so the positions that
            # predict answer tokens are the last width + 1 (minus the final one) in every row.
            logits = _forward_logits(model, ids, mask, width + 1)[:, :-1]  # [B, width, V]
            tok = target_logprobs(logits, ids[:, p - 1 :])  # [B, width]: log p of ids[:, p:]
            total = (tok * ans).sum(dim=1)
            count = ans.sum(dim=1)
            for s, n in zip(total.tolist(), count.tolist(), strict=True):
                scores.append(s / n if n else math.nan)
    finally:
        model.train(was_training)
    return scores


def random_candidates(
    fact: Fact, pool: Iterable[Fact], exclude: Iterable[str], n: int, seed: int = 0
) -> list[str]:
    """Up to ``n`` answers of the fact's relation for *other* entities, sampled reproducibly.

    Candidates are the pool's answers of the same relation about another entity whose normalized
    form is neither among ``exclude`` (the correct and corrupted answers) nor already taken;
    the sample depends only on ``seed``, the fact and the pool (not on other facts).
    """
    banned = {normalize_answer(a) for a in exclude} | {""}
    seen: dict[str, str] = {}
    for other in pool:
        if other.relation != fact.relation or other.entity == fact.entity:
            continue
        for answer in other.answers:
            norm = normalize_answer(answer)
            if norm not in banned and norm not in seen:
                seen[norm] = answer
    found = sorted(seen.values())
    rng = random.Random(f"{seed}|{fact.entity}|{fact.relation}")
    return rng.sample(found, min(n, len(found)))


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def logit_analysis(
    model,
    tokenizer,
    facts: Sequence[Fact],
    context: Mapping[str, Sequence[ContextExample]],
    corrupted: Mapping[tuple[str, str], Sequence[str]],
    *,
    pool: FactSet | None = None,
    n_random: int = 5,
    seed: int = 0,
    n_shots: int = 5,
    batch_size: int = 64,
) -> dict:
    """Where the probability mass goes: correct vs corrupted vs random answers.

    For every fact, under its few-shot prompt, each candidate gets :func:`answer_logprob`; each
    category (correct = the accepted answers, corrupted = ``corrupted[(entity, relation)]``,
    random = :func:`random_candidates` from ``pool`` or else ``facts``) is averaged per fact, then
    over facts. Facts without a corrupted answer (or without random candidates) are left out of
    that category's mean.

    Returns:
        ``{"correct", "corrupted", "random"}`` (means over facts; None where no fact has the
        category), ``"n_facts"``, ``"n_corrupted"``, ``"n_random"`` (facts counted in each) and
        ``"per_fact"`` (entity, relation, the three per-fact means and the random answers).
    """
    by_relation: dict[str, list[Fact]] = {}  # pool facts per relation, in pool order
    for other in pool.items() if pool is not None else facts:
        by_relation.setdefault(other.relation, []).append(other)
    per_fact = []
    for fact in facts:
        wrong = list(corrupted.get((fact.entity, fact.relation), ()))
        same = by_relation.get(fact.relation, [])
        rand = random_candidates(fact, same, [*fact.answers, *wrong], n_random, seed)
        prompt = few_shot_prompt(fact, context.get(fact.relation, ()), n_shots)
        cands = [*fact.answers, *wrong, *rand]
        check_encodable(tokenizer, [prompt, *cands], f"{fact.entity} / {fact.relation}")
        scores = answer_logprob(model, tokenizer, prompt, cands, batch_size)
        a, w = len(fact.answers), len(wrong)
        per_fact.append(
            {
                "entity": fact.entity,
                "relation": fact.relation,
                "correct": _mean(scores[:a]),
                "corrupted": _mean(scores[a : a + w]),
                "random": _mean(scores[a + w :]),
                "random_answers": rand,
            }
        )
    out: dict = {}
    for cat in ("correct", "corrupted", "random"):
        vals = [r[cat] for r in per_fact if r[cat] is not None]
        out[cat] = sum(vals) / len(vals) if vals else None
        if cat != "correct":
            out[f"n_{cat}"] = len(vals)
    out["n_facts"] = len(per_fact)
    out["per_fact"] = per_fact
    return out


def recovery(clean: float, corrupted: float, unlearned: float) -> float:
    """(unlearned − corrupted) / (clean − corrupted): 1 = fully restored, 0 = no better, nan if
    the corruption changed nothing (clean == corrupted)."""
    if clean == corrupted:
        return math.nan
    return (unlearned - corrupted) / (clean - corrupted)


def check_encodable(tokenizer, texts: Sequence[str], what: str) -> None:
    """Raise if the tokenizer maps any part of ``texts`` to its unknown token.

    Texts are encoded without special tokens (so a tokenizer whose unk doubles as bos/eos, like
    GPT-2's, gives no false alarm). Tokenizers without an unk token (byte-level BPE) always pass.

    Raises:
        ValueError: naming ``what``, the first such text and, for fast tokenizers, the word.
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        ids = enc["input_ids"]
        if unk in ids:
            j = ids.index(unk)
            word = ""
            if "offset_mapping" in enc:
                lo, hi = enc["offset_mapping"][j]
                word = f" ({text[lo:hi]!r} is not in its vocabulary)"
            raise ValueError(
                f"{what}: the tokenizer cannot encode {text[:80]!r}{word}; use the model's own "
                "tokenizer or one whose vocabulary covers these facts"
            )
