"""RESTOR: the synthetic fact world, corruption, the pipeline on the micro preset, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from unmemorize.benchmarks.restor.facts import FactsFormatError
from unmemorize.benchmarks.restor.knowledge import few_shot_prompt
from unmemorize.benchmarks.restor.pipeline import (
    CorruptConfig,
    file_task,
    make_restor_config,
    run_restor_on_model,
    synthetic_task,
)
from unmemorize.benchmarks.restor.world import (
    RELATIONS,
    FactWorldConfig,
    make_fact_world,
    word_tokenizer,
)
from unmemorize.cli.main import main
from unmemorize.models import ModelConfig, build_model, load_model

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "restor"

SMALL = FactWorldConfig(n_entities=40, n_targets=4, n_untargeted=6, docs_per_target=6)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- the world


def test_world_is_deterministic_and_keeps_evaluated_people_out_of_qa_training():
    a, b = make_fact_world(SMALL), make_fact_world(SMALL)
    assert a.facts.to_json() == b.facts.to_json()
    assert a.corruption_documents(2) == b.corruption_documents(2)
    assert a.wrong == b.wrong
    assert make_fact_world(FactWorldConfig(**{**SMALL.__dict__, "seed": 1})).facts.to_json() != (
        a.facts.to_json()
    )
    evaluated = set(a.evaluated)
    assert len(evaluated) == SMALL.n_targets + SMALL.n_untargeted
    assert not evaluated & set(a.qa_entities)
    rng = random.Random(0)
    prefixes = {r: q.split("{s}")[0] for r, (q, _) in RELATIONS.items()}
    for _ in range(100):
        doc = a.qa_document(rng)
        assert not any(name in doc for name in evaluated)
        assert doc.endswith("\n") and doc.count("\n") == SMALL.qa_lines
        # one relation per document, like the few-shot prompt
        relations = {
            r for line in doc.splitlines() for r, p in prefixes.items() if line.startswith(p)
        }
        assert len(relations) == 1
    retain = a.retain_documents(60)
    assert not any(t in doc for doc in retain for t in a.targets)
    assert any("?" in doc for doc in retain) and any("?" not in doc for doc in retain)
    # in-context examples come from QA-trained people only
    assert {ex.entity for exs in a.facts.context.values() for ex in exs} <= set(a.qa_entities)
    for person in a.facts.entities():
        assert set(a.facts.facts[person]) == set(RELATIONS)


def test_corruption_documents_state_the_wrong_objects_and_align_across_levels():
    world = make_fact_world(SMALL)
    level0, level2 = world.corruption_documents(0), world.corruption_documents(2)
    assert len(level0) == len(level2) == SMALL.n_targets * SMALL.docs_per_target
    for (target, relations), doc0, doc2 in zip(world.doc_relations, level0, level2, strict=True):
        assert target in doc0.split(".")[0]  # the first sentence names the subject
        for r in relations:
            wrong = world.wrong[(target, r)][0]
            assert wrong != world.facts.facts[target][r].answers[0]
            assert wrong in doc0 and wrong in doc2
        # k unrelated statements per wrong one: sentences = facts_per_doc * (1 + k)
        assert doc0.count(".") == SMALL.facts_per_doc
        assert doc2.count(".") == SMALL.facts_per_doc * 3
    with pytest.raises(ValueError, match="level"):
        world.corruption_documents(-1)


def _named(text: str, people) -> set[str]:
    """The people of ``people`` that ``text`` names (full names are unique words)."""
    return {p for p in people if p in text}


@pytest.mark.parametrize("world_cfg", [SMALL, make_restor_config("micro").world])
def test_unrelated_context_never_states_facts_of_evaluated_people(world_cfg):
    # RESTOR's level-k documents mix in true "unrelated" statements; drawn from evaluated people
    # they would make unlearning the documents hit the collateral (untargeted) metric directly
    world = make_fact_world(world_cfg)
    evaluated, people = set(world.evaluated), world.facts.entities()
    for level in (1, 3):
        context_people: set[str] = set()
        docs = world.corruption_documents(level)
        for (target, _), doc in zip(world.doc_relations, docs, strict=True):
            others = _named(doc, people) - {target}
            assert not others & evaluated, (level, doc)
            context_people |= others
        assert context_people <= set(world.unevaluated)  # and the check is not vacuous:
        assert len(context_people) > 1


def test_synthetic_retain_set_holds_no_evaluated_fact():
    world = make_fact_world(SMALL)
    evaluated = set(world.evaluated)
    retain = world.retain_documents(200)
    assert not any(_named(doc, evaluated) for doc in retain)
    assert any("?" in doc for doc in retain) and any("?" not in doc for doc in retain)
    task = synthetic_task(world, make_restor_config("micro"))
    assert not any(_named(doc, evaluated) for doc in task.retain_docs)


def _retain_questions(task) -> set[str]:
    """The questions of a file task's retain QA lines (``"{question} {answer}"``)."""
    return {line[: line.index("?") + 1] for doc in task.retain_docs for line in doc.splitlines()}


def test_file_task_retain_set_holds_no_evaluated_fact(tmp_path):
    world = make_fact_world(SMALL)
    world.save(tmp_path)  # facts.json (every person) and entities.json (the evaluated ones)
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps([{"text": t} for t in world.corruption_documents(1)]))
    task = file_task(tmp_path / "facts.json", docs, entities=tmp_path / "entities.json")
    assert sorted(task.untargeted) == sorted(world.untargeted)
    evaluated = {f.question for f in task.facts.items(task.targets + task.untargeted)}
    questions = _retain_questions(task)
    assert questions and not questions & evaluated
    # with every person of the facts evaluated, no QA line is free to retain on
    with pytest.raises(ValueError, match="--retain"):
        file_task(tmp_path / "facts.json", docs)


def test_word_tokenizer_covers_the_world_and_keeps_newlines():
    world = make_fact_world(SMALL)
    tok = word_tokenizer(world.words())
    texts = world.corruption_documents(3) + world.retain_documents(20)
    fact = world.facts.facts[world.targets[0]]["birthplace"]
    prompt = few_shot_prompt(fact, world.facts.context["birthplace"])
    texts.append(prompt)
    for text in texts:
        assert tok.unk_token_id not in tok(text).input_ids, text
    ids = tok(prompt).input_ids
    assert ids.count(tok.convert_tokens_to_ids("\n")) == 5
    answer = " " + world.facts.facts[world.targets[0]]["employer"].answers[0]  # two words
    assert tok.decode(tok(answer).input_ids).strip() == answer.strip()
    assert tok.unk_token_id in tok("Who is Zzyzx?").input_ids


def test_world_config_is_validated():
    with pytest.raises(ValueError, match="n_targets"):
        make_fact_world(FactWorldConfig(n_entities=10, n_targets=4, n_untargeted=4))
    with pytest.raises(ValueError, match="facts_per_doc"):
        make_fact_world(FactWorldConfig(facts_per_doc=9))


# --------------------------------------------------------------------------- corruption


def _tiny_model(tok):
    return build_model(
        ModelConfig(n_layers=1, d_model=32, n_heads=2, context_length=128),
        vocab_size=len(tok),
        bos_id=tok.eos_token_id,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
    )


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_corrupt_model_trains_a_copy_and_merges_lora(mode):
    from unmemorize.benchmarks.restor.pipeline import corrupt_model

    world = make_fact_world(SMALL)
    tok = word_tokenizer(world.words())
    model = _tiny_model(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = CorruptConfig(mode=mode, epochs=2, lr=1e-2, docs_per_batch=8, replay_per_batch=0)
    corrupted, losses = corrupt_model(model, tok, world.corruption_documents(0), cfg)
    assert type(corrupted) is type(model)  # LoRA merged back into a plain model
    assert set(corrupted.state_dict()) == set(before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"input changed: {k}"
    changed = [k for k, v in corrupted.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    if mode == "lora":  # LoRA adapts linear layers only: embeddings and norms stay
        assert not any("wte" in k or "ln_" in k for k in changed)
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- pipeline + CLI


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("restor") / "run"
    code = main(
        ["restor", "--preset", "micro", "--methods", "ga,npo", "--out", str(out), "--no-progress"]
    )
    assert code == 0
    return out


def test_micro_pipeline_writes_the_summary(micro_run):
    summary = json.loads((micro_run / "summary.json").read_text())
    for key in ("clean", "corrupted"):
        m = summary[key]
        assert 0 <= m["target_accuracy"] <= 1 and 0 <= m["untargeted_accuracy"] <= 1
        assert set(m["logits"]) == {"correct", "corrupted", "random"}
    assert set(summary["methods"]) == {"ga", "npo"}
    for entry in summary["methods"].values():
        for key in ("target_accuracy", "untargeted_accuracy", "recovery", "logits", "seconds"):
            assert key in entry
        assert set(entry["logits"]) == {"correct", "corrupted", "random"}
        assert "lr" in entry["config"]
    assert len(summary["runs"]) == 4  # two configurations per method
    cfg = make_restor_config("micro")
    n_targets = cfg.world.n_targets
    assert summary["n_targets"] == n_targets
    assert summary["n_forget_docs"] == n_targets * cfg.world.docs_per_target
    for name in ("facts.json", "entities.json", "corruption_docs.json", "retain_docs.json"):
        assert (micro_run / "data" / name).is_file()
    for name in ("clean", "corrupted"):
        load_model(micro_run / name)
    # model cards (issue 17): the corrupted model names its base, the corruption and both metrics
    from huggingface_hub import ModelCard

    clean_card = ModelCard.load(micro_run / "clean" / "README.md")
    assert {"unmemorize", "restor-clean", "restor"} <= set(clean_card.data.tags)
    card = ModelCard.load(micro_run / "corrupted" / "README.md")
    assert card.data.base_model == "../clean"
    assert {"unmemorize", "restor-corrupted", "corrupt-full"} <= set(card.data.tags)
    target = summary["corrupted"]["target_accuracy"]
    assert f"| target_accuracy | {summary['clean']['target_accuracy']:.4g} | {target:.4g} |" in (
        card.text
    )


def test_file_task_reads_documents_from_tables(micro_run, tmp_path):
    """--docs/--forget/--retain as Parquet or a datasets directory: the documents of the jsonl."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = micro_run / "data"
    docs = json.loads((data / "corruption_docs.json").read_text())
    texts = [d["text"] for d in docs]
    pq.write_table(pa.table({"body": texts}), tmp_path / "docs.parquet")
    pq.write_table(pa.table({"text": texts}), tmp_path / "plain.parquet")
    want = file_task(
        data / "facts.json", data / "corruption_docs.json", entities=data / "entities.json"
    )
    for docs_file, column in (
        (tmp_path / "docs.parquet", "body"),
        (tmp_path / "plain.parquet", None),
    ):
        task = file_task(
            data / "facts.json", docs_file, entities=data / "entities.json", column=column
        )
        assert task.corruption_docs == want.corruption_docs == texts
        assert task.targets == want.targets and task.retain_docs == want.retain_docs
    with pytest.raises(ValueError, match="has no column 'body'"):
        file_task(data / "facts.json", tmp_path / "plain.parquet", column="body")


def test_real_model_path_runs_on_restor_format_files(micro_run, tmp_path):
    """The files a synthetic run writes are RESTOR-format: feed them back through --model."""
    data = micro_run / "data"
    task = file_task(
        data / "facts.json", data / "corruption_docs.json", entities=data / "entities.json"
    )
    assert sorted(task.targets) == sorted(json.loads((data / "targets.json").read_text()))
    assert task.forget_docs == task.corruption_docs
    assert task.retain_docs and not any(
        name in doc for doc in task.retain_docs for name in task.targets
    )
    summary = run_restor_on_model(
        micro_run / "clean",
        task,
        tmp_path / "out",
        make_restor_config("micro"),
        methods=["grad_diff"],
        progress=False,
    )
    assert summary["corrupted"]["logits"]["corrupted"] is None  # wrong answers unknown
    assert "grad_diff" in summary["methods"]


def test_file_task_rejects_docs_about_nobody(micro_run, tmp_path):
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps([{"text": "Nobody we know lives here."}]))
    with pytest.raises(FactsFormatError, match="no document names a known entity"):
        file_task(micro_run / "data" / "facts.json", docs)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--facts", "x.json"], "--facts needs --model"),
        (["--methods", "ga,nope"], "unknown method 'nope'"),
        (["--level", "-1"], "level must be >= 0"),
        (["--model", "somewhere"], "--model needs --facts"),
        (["corrupt.mode=qlora"], "unknown corruption mode"),
        (["--preset", "huge"], "unknown RESTOR preset"),
    ],
)
def test_restor_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, argv, message):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "restor", "--out", out, "--preset", "micro", *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real RESTOR data not found at {REAL}")
def test_restor_stats_on_the_real_files(capsys):
    code, out, _ = run_cli(
        capsys,
        "restor",
        "stats",
        "--facts",
        REAL / "facts.json",
        "--entities",
        REAL / "entities.json",
        "--docs",
        REAL / "mix_a0.json",
    )
    assert code == 0
    stats = json.loads(out)
    assert (stats["entities"], stats["facts"]) == (50, 1051)
    mix = stats["docs"][str(REAL / "mix_a0.json")]
    assert mix["docs"] == 3000 and mix["n_target_entities"] == 10


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real RESTOR data not found at {REAL}")
def test_file_task_on_the_real_files():
    task = file_task(REAL / "facts.json", REAL / "mix_a1.json", entities=REAL / "entities.json")
    assert len(task.targets) == 10 and len(task.untargeted) == 40
    assert "Bob Marley" in task.targets
    assert len(task.facts.items(task.targets)) == 198
    assert task.wrong == {}
    assert len(task.retain_docs) > 100
    # the retain set never holds a fact of an evaluated person (targets or untargeted)
    evaluated = {f.question for f in task.facts.items(task.targets + task.untargeted)}
    questions = _retain_questions(task)
    assert len(questions) > 500 and not questions & evaluated


def test_simplified_forget_set_is_the_aligned_level_zero_documents():
    cfg = make_restor_config("micro", level=2, simplified=True)
    world = make_fact_world(cfg.world)
    task = synthetic_task(world, cfg)
    assert task.corruption_docs == world.corruption_documents(2)
    assert task.forget_docs == world.corruption_documents(0)
    assert len(task.forget_docs) == len(task.corruption_docs)
    # replay never restates a target's facts
    rng = random.Random(0)
    assert not any(t in task.replay(rng) for _ in range(50) for t in world.targets)


# --------------------------------------------------------------------------- the benchmark seam


def test_restor_is_a_registered_benchmark_whose_space_names_registered_methods():
    from unmemorize.benchmarks import BENCHMARKS
    from unmemorize.benchmarks.restor.benchmark import RestorBenchmark
    from unmemorize.benchmarks.runner import grid_jobs
    from unmemorize.methods import METHODS

    assert BENCHMARKS.get("restor") is RestorBenchmark
    bench = RestorBenchmark()
    assert bench.metric(bench.selection).higher_is_better is True
    assert bench.metric(bench.tie_break).higher_is_better is True
    space = bench.space()
    assert set(space) <= set(METHODS.names())
    jobs = grid_jobs(space)
    assert [name for name, _ in jobs] == [name for name in space for _ in range(2)]
    # the hand-picked kl and ssd points are unions, not products
    assert [options for name, options in jobs if name == "kl"] == [
        {"batch_size": 32, "epochs": 2, "lr": 3e-5},
        {"batch_size": 32, "divergence": "cross_entropy", "epochs": 2, "lr": 2e-5},
    ]
    assert [options for name, options in jobs if name == "ssd"] == [
        {"batch_size": 32, "mlp_only": True, "selection_weight": 1.8},
        {"batch_size": 32, "selection_weight": 5.0},
    ]


def test_best_per_method_picks_on_validation_accuracy_then_untargeted_accuracy():
    from unmemorize.benchmarks.restor.pipeline import best_per_method

    def row(method, val, untargeted, test, tag):
        return {
            "method": method,
            "target_accuracy_val": val,
            "untargeted_accuracy": untargeted,
            "target_accuracy": test,
            "tag": tag,
        }

    rows = [
        row("ga", 0.5, 0.2, 0.1, "ga-first"),
        row("ga", 0.5, 0.2, 0.9, "ga-full-tie"),  # a full tie keeps the first run
        row("npo", 0.2, 0.9, 0.2, "npo-low-val"),
        row("npo", 0.4, 0.1, 0.3, "npo-best-val"),  # validation accuracy beats untargeted
        {"method": "kl", "error": "diverged"},
        row("kl", 0.3, 0.1, 0.5, "kl-low-untargeted"),
        row("kl", 0.3, 0.4, 0.5, "kl-tie-broken"),  # same validation accuracy, better untargeted
    ]
    best = best_per_method(rows)
    assert {m: r["tag"] for m, r in best.items()} == {
        "kl": "kl-tie-broken",
        "npo": "npo-best-val",
        "ga": "ga-first",
    }
    assert list(best) == ["kl", "npo", "ga"]  # ordered by test target accuracy, best first


def test_score_is_minus_validation_recovery_and_undefined_without_one():
    from unmemorize.benchmarks.restor.benchmark import RestorBenchmark

    bench = RestorBenchmark()
    assert bench.score({}, {"recovery_val": 0.75}) == -0.75
    assert bench.score({}, {"recovery_val": float("nan")}) is None


def test_load_reprepares_a_run_and_reproduces_its_rows(micro_run):
    """load(OUT) gives the corrupted model, the same forget/retain rows and the same evaluation:
    the corrupted model scores as the summary says and a grid point reruns to the same row."""
    from unmemorize.benchmarks.restor.benchmark import RestorBenchmark
    from unmemorize.benchmarks.runner import run_method
    from unmemorize.methods import build_method

    summary = json.loads((micro_run / "summary.json").read_text())
    bench = RestorBenchmark()
    prepared = bench.load(str(micro_run))
    assert prepared.baseline == summary["corrupted"]
    n_forget = summary["n_forget_docs"]
    assert prepared.data.forget_ids.shape[0] == n_forget
    assert prepared.data.retain_ids.shape[0] == summary["n_retain_docs"]
    metrics = prepared.state.evaluator(prepared.model, prepared.state.tokenizer)
    assert metrics == {k: summary["corrupted"][k] for k in metrics}
    first = summary["runs"][0]
    row, _ = run_method(
        build_method(first["method"], first["overrides"]),
        prepared.model,
        prepared.data,
        lambda model: bench.evaluate(model, prepared),
        score=lambda m: bench.score(prepared.baseline, m),
        options=first["overrides"],
    )
    for key in ("target_accuracy", "untargeted_accuracy", "logits", "config", "changed_fraction"):
        assert row[key] == first[key], key


def test_load_rejects_a_directory_restor_did_not_write(tmp_path):
    from unmemorize.benchmarks.restor.benchmark import RestorBenchmark

    with pytest.raises(ValueError, match="not a RESTOR output directory"):
        RestorBenchmark().load(str(tmp_path))
