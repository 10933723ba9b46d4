"""The work the 2-process equivalence test compares with one process (tests/test_scaleout.py).

Run as ``accelerate launch --multi_gpu --num_processes 2 -m tests.dist_worker RUN OUT`` (on a
machine without CUDA the two processes talk over gloo), or call :func:`run_all` in one process.
Writes into OUT: per rank, the losses and final weights of gradient methods run through the API
(``api_rank{r}.safetensors``); from rank 0, the ``unlearn`` output directory and the ``measure``
report of the CLI on the TinyMem run RUN.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from unmemorize.cli.main import main
from unmemorize.distributed import process_rank
from unmemorize.methods import UnlearnData, build_method

from .zoo import V, make_model

#: Gradient methods through the API. 5 forget rows in batches of 4: steps of 4 and 1 rows, so
#: the shards are 2+2 and 1+0 (a rank without rows). KL runs with LoRA and both references.
API_RUNS = {
    "npo": ("llama", ["lr=3e-3", "epochs=2", "batch_size=4", "retain_weight=0.5"]),
    "npo_batch_mean": ("llama", ["lr=3e-3", "epochs=2", "batch_size=4", "ratio=batch_mean"]),
    "kl_lora": (
        "llama",
        ["lr=1e-2", "epochs=2", "batch_size=4", "lora_rank=4", "divergence=cross_entropy"],
    ),
}
CLI_UNLEARN = ["--method", "npo", "--no-progress", "lr=3e-4", "batch_size=3", "epochs=2"]


def api_data() -> UnlearnData:
    g = torch.Generator().manual_seed(1)
    forget = torch.randint(40, V, (5, 12), generator=g)
    retain = torch.randint(2, 40, (9, 12), generator=g)
    forget[1, 9:] = 1  # padding: pooled token means differ from means of row means
    return UnlearnData(forget, retain, pad_id=1, forget_prefix_len=torch.tensor([4, 6, 3, 5, 6]))


def run_api(out: Path) -> None:
    """Every API_RUNS method on its tiny model; losses and weights to ``api_rank{r}``."""
    tensors: dict[str, torch.Tensor] = {}
    for key, (family, options) in API_RUNS.items():
        name = key.split("_")[0]
        result = build_method(name, options).apply(make_model(family), api_data())
        tensors[f"{key}/losses"] = torch.tensor(result.losses, dtype=torch.float64)
        for param, value in result.model.state_dict().items():
            tensors[f"{key}/{param}"] = value.detach().clone().contiguous()
    save_file(tensors, str(out / f"api_rank{process_rank()}.safetensors"))


def run_cli(run: Path, out: Path) -> None:
    """``unmemorize unlearn`` (npo) and ``unmemorize measure`` on the run; rank 0 writes."""
    code = main(["unlearn", "--model", str(run), "--out", str(out / "unlearned"), *CLI_UNLEARN])
    assert code == 0, code
    code = main(["measure", "--model", str(run), "--json", str(out / "measure.json")])
    assert code == 0, code


def run_all(run: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_api(out)
    run_cli(run, out)
    (out / f"done_rank{process_rank()}.json").write_text(json.dumps({"ok": True}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run_all(Path(sys.argv[1]), Path(sys.argv[2]))
