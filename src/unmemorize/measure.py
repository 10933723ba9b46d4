"""Measure which sequences a model reproduces verbatim: the library behind ``unmemorize measure``.

A sequence is memorized (k-extractable, Carlini et al. 2023; the TinyMem paper, Sakarvadia et al.
2024, arXiv 2410.02159, uses P = K = 32 on Pythia) when greedy decoding from its first P tokens
reproduces the next K tokens exactly. The verdict comes from one teacher-forced pass
(:func:`~unmemorize.metrics.memorized_sharded`); ``generate=True`` also runs real greedy
generation, which checks the verdicts and adds the token-level score (the fraction of the K tokens
reproduced).

Two sources of sequences:

* a model trained by ``unmemorize train`` (a TinyMem run) without ``sequences``: its own
  memorization candidates (noised sequences whose noise falls inside the scored window), in the
  run's own window;
* any local causal LM with a ``sequences`` jsonl file or table (Parquet, Arrow, a ``datasets``
  directory; streamed: memory stays bounded by one chunk of rows whatever the file's length), in the window P -> K given (default: the run's, or 32 -> 32).

Under ``accelerate launch`` each process judges every N-th row and the verdicts merge in order;
rank 0 alone writes the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


@dataclass
class Measurement:
    """The result of :func:`measure`.

    Attributes:
        report: the JSON report: :meth:`~unmemorize.metrics.MemorizationReport.to_dict` plus
            ``model``, ``prefix_len`` (None for a run's own window), ``suffix_len``, ``seconds``
            (the teacher-forced pass, generation excluded), ``generate_agrees`` and
            ``mean_token_score`` (with ``generate``) and ``sequences`` (per-sequence verdicts,
            filled only when ``per_sequence``, since they grow with the sequences).
        source: what was measured, in words (``"40 memorization candidates of the run"``).
    """

    report: dict[str, Any]
    source: str


def measure(
    model_dir: str | Path,
    *,
    sequences: str | Path | None = None,
    prefix_len: int | None = None,
    suffix_len: int | None = None,
    batch_size: int = 512,
    generate: bool = False,
    report_path: str | Path | None = None,
    column: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | None = None,
) -> Measurement:
    """Judge every sequence of ``model_dir``'s run (or of ``sequences``) memorized or not.

    Args:
        model_dir: a local Hugging Face model directory (a TinyMem run or any causal LM).
        sequences: jsonl (or a Parquet/Arrow/``datasets`` table) of ``{"input_ids"}``,
            ``{"text"}`` or ``{"prefix_ids", "target_ids"}`` rows; None measures a TinyMem run's
            own candidates.
        prefix_len: P, prompt tokens (``sequences`` only; default the run's, or 32).
        suffix_len: K, tokens that must match (``sequences`` only; default the run's, or 32).
        batch_size: sequences per forward pass (halved automatically on out-of-memory).
        generate: also run greedy generation (checks the verdicts, adds the token score).
        report_path: write the report, with per-sequence verdicts, to this JSON file
            (atomically, rank 0 only); checked before the work.
        column: ``sequences`` only: the key/column holding each row's text or token ids
            (default ``prefix_ids`` + ``target_ids``, ``input_ids`` or ``text``).
        dtype, device, device_map: how to load the model: names (``bfloat16``, ``cuda``) or torch
            objects, resolved after the option checks; ``device_map`` shards one model's layers
            over every GPU, then the CPU (it excludes a multi-process launch).

    Raises:
        UserError: a bad option combination (named as its command-line flag).
        ValueError, FileNotFoundError: a bad model directory or sequence file.
    """
    from .benchmarks.tinymem.experiment import load_run
    from .data.sequences import iter_sequences
    from .distributed import is_main_process, launched_processes, run_sharded
    from .io import atomic_write_json
    from .metrics import MemorizationReport, generate_memorized, memorized_sharded
    from .runtime import check_window, resolve_device, resolve_dtype

    if batch_size < 1:
        raise UserError("--batch-size must be positive")
    if device_map is not None and launched_processes() > 1:
        raise UserError(
            "--device-map spreads one model over every GPU; under a multi-process launch each "
            "process loads its own copy: use one or the other"
        )
    if report_path:
        from .io import check_output_file

        check_output_file(report_path, "--json")  # before the work, not after it
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    model, tokenizer, data = load_run(model_dir, dtype=dtype, device=device, device_map=device_map)
    vocab = model.get_input_embeddings().weight.shape[0]
    t0 = time.perf_counter()
    if sequences is None:
        if data is None:
            raise UserError(
                f"{model_dir} was not trained by `unmemorize train`; pass --sequences FILE"
            )
        mem = data.memorization
        if prefix_len is not None or suffix_len is not None or column is not None:
            raise UserError(
                "--prefix-len/--suffix-len/--window/--column apply to --sequences; a run uses "
                "its own candidates and window"
            )
        k = mem.suffix_len
        chunks = [(mem.prompt_ids, mem.target_ids, mem.prefix_len)]
    else:
        # default window: the run's own (a TinyMem run), else Pythia-style 32 -> 32
        run_p = (
            int(data.memorization.prefix_len[0])
            if data is not None and len(data.memorization)
            else 32
        )
        run_k = data.memorization.suffix_len if data is not None else 32
        p = prefix_len if prefix_len is not None else run_p
        k = suffix_len if suffix_len is not None else run_k
        check_window(model, p, k)
        # streamed: memory stays bounded by one chunk of rows whatever the file's length
        chunks = (
            (ids, ids, p)
            for ids in iter_sequences(sequences, tokenizer, vocab, p, k, column=column)
        )
    parts, gen_parts, gen_seconds = [], [], 0.0
    # under `accelerate launch` each process judges every N-th row; verdicts merge in order
    for prompt, target, prefix in chunks:
        parts.append(memorized_sharded(model, prompt, target, prefix, k, batch_size=batch_size))
        if generate:
            t_gen = time.perf_counter()
            prefix = torch.as_tensor(prefix).expand(len(target))

            def generate_rows(rows, prompt=prompt, target=target, prefix=prefix):
                return generate_memorized(
                    model, prompt[rows], target[rows], prefix[rows], k, batch_size=batch_size
                )

            gen_parts.append(run_sharded(generate_rows, len(target), device))
            gen_seconds += time.perf_counter() - t_gen
    verdict = torch.cat(parts)
    if sequences is None:
        candidate, group = mem.window_differs(), mem.group
        source = f"{len(mem)} memorization candidates of the run"
    else:
        candidate = torch.ones(len(verdict), dtype=torch.bool)
        group = torch.zeros(len(verdict), dtype=torch.long)
        source = f"{len(verdict)} sequences from {sequences}"
    seconds = time.perf_counter() - t0 - gen_seconds
    result = MemorizationReport(verdict, candidate, group).to_dict()
    result.update(
        {
            "model": str(model_dir),
            "prefix_len": p if sequences else None,
            "suffix_len": k,
            "seconds": seconds,
        }
    )
    # per-sequence rows grow with the sequences: built only when written (report_path)
    per_seq = (
        [
            {"index": i, "memorized": bool(v), "candidate": bool(c)}
            for i, (v, c) in enumerate(zip(verdict.tolist(), candidate.tolist(), strict=True))
        ]
        if report_path
        else []
    )
    if generate:
        gen_verdict = torch.cat([v for v, _ in gen_parts])
        score = torch.cat([s for _, s in gen_parts])
        result["generate_agrees"] = bool((gen_verdict == verdict).all())
        result["mean_token_score"] = (
            float(score[candidate].mean()) if bool(candidate.any()) else 0.0
        )
        for row, s in zip(per_seq, score.tolist() if report_path else [], strict=True):
            row["token_score"] = s
    result["sequences"] = per_seq
    if report_path and is_main_process():
        atomic_write_json(report_path, result)
    return Measurement(result, source)


__all__ = ["Measurement", "measure"]
