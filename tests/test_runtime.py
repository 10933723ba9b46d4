"""Device, dtype, context and memory checks, and the out-of-memory back-off (unmemorize.runtime)."""

from __future__ import annotations

import pytest
import torch

from tests.zoo import make_model
from unmemorize import runtime
from unmemorize.metrics import memorized
from unmemorize.runtime import (
    WINDOWS,
    check_memory_fits,
    check_window,
    is_out_of_memory,
    resolve_device,
    resolve_dtype,
    resolve_window,
    run_in_batches,
    safetensors_parameter_count,
)


def test_resolve_dtype_and_device():
    assert resolve_dtype(None) is None
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; use one of float32"):
        resolve_dtype("fp8")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_on_a_machine_without_it_says_use_cpu():
    with pytest.raises(ValueError, match="CUDA is not available on this machine; use --device cpu"):
        resolve_device("cuda")


def test_check_window_names_both_lengths_and_the_context():
    model = make_model("llama", positions=16)
    check_window(model, 8, 8)
    with pytest.raises(ValueError, match=r"8 \+ 9 = 17 tokens exceeds the model's context of 16"):
        check_window(model, 8, 9)


def test_named_windows_resolve_to_prefix_and_suffix_lengths():
    # TinyMem's Pythia test: a 32-token prefix and an exact match on the next 40 tokens
    assert resolve_window("tinymem-32-40", None, None) == (32, 40) == WINDOWS["tinymem-32-40"]
    assert resolve_window("pythia-32-32", None, None) == (32, 32)
    assert resolve_window(None, 8, None) == (8, None)
    with pytest.raises(ValueError, match="did you mean 'pythia-32-32'"):
        resolve_window("pythia-32", None, None)
    with pytest.raises(ValueError, match="--window sets both"):
        resolve_window("pythia-32-32", 16, None)


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_parameter_count_from_safetensors_headers_matches_the_model(kind, tmp_path):
    model = make_model(kind)
    model.save_pretrained(tmp_path, safe_serialization=True)
    stored = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    n = safetensors_parameter_count(tmp_path)
    # tied embeddings are stored once; buffers that are not saved do not count
    assert sum(p.numel() for p in model.parameters()) <= n <= stored


def test_parameter_count_rejects_a_file_that_is_not_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 4)
    with pytest.raises(ValueError, match="not a safetensors file"):
        safetensors_parameter_count(tmp_path)


def test_model_too_large_says_what_it_needs_and_what_to_try(tmp_path, monkeypatch):
    model = make_model("gpt_neox")
    model.save_pretrained(tmp_path, safe_serialization=True)
    need = check_memory_fits(tmp_path, torch.float32, torch.device("cpu"))
    assert need >= 4 * safetensors_parameter_count(tmp_path)
    monkeypatch.setattr(runtime, "available_memory", lambda device: need // 3)
    with pytest.raises(MemoryError) as err:
        check_memory_fits(tmp_path, torch.float32, torch.device("cpu"))
    message = str(err.value)
    assert "needs about" in message and "in float32" in message
    assert "--dtype bfloat16" in message and "LoRA" in message
    # bfloat16 halves the need: with room for half plus slack it fits
    monkeypatch.setattr(runtime, "available_memory", lambda device: need // 2 + 1)
    check_memory_fits(tmp_path, torch.bfloat16, torch.device("cpu"))


def _oom_above(limit: int, calls: list):
    def fn(start: int, stop: int) -> list[int]:
        calls.append(stop - start)
        if stop - start > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(start, stop))

    return fn


def test_run_in_batches_halves_on_out_of_memory_and_keeps_the_order():
    calls: list[int] = []
    out = run_in_batches(_oom_above(3, calls), 11, 16)
    assert [i for chunk in out for i in chunk] == list(range(11))
    assert calls[:3] == [11, 8, 4]  # 16 -> 8 -> 4 -> 2, then 2 for the rest
    assert max(calls[3:]) == 2


def test_run_in_batches_gives_up_at_one_row_and_passes_other_errors_through():
    with pytest.raises(MemoryError, match="out of memory with a batch of one row"):
        run_in_batches(_oom_above(0, []), 4, 4)

    def broken(start: int, stop: int):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_in_batches(broken, 4, 4)
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_memorized_survives_out_of_memory_with_the_same_verdicts():
    model = make_model("gpt2", positions=16)
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (20, 12))
    with torch.no_grad():  # make some rows memorized: their suffix is the greedy continuation
        for _ in range(6):
            logits = model(input_ids=ids[:10, :-1]).logits
            ids[:10, 6:] = logits.argmax(-1)[:, 5:]
    expected = memorized(model, ids, ids, 6, 6, batch_size=64)
    assert 0 < int(expected.sum()) < 20

    forward = model.forward

    def small_memory(*args, **kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is not None and x.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(*args, **kwargs)

    model.forward = small_memory
    assert torch.equal(memorized(model, ids, ids, 6, 6, batch_size=64), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adamw_keeps_updates_too_small_for_a_low_precision_weight(dtype):
    """50 steps of ~1e-4 on weights of 1.0: each step alone rounds away in 16 bits."""
    kept, plain = (torch.nn.Parameter(torch.ones(8, dtype=dtype)) for _ in range(2))
    fp32 = torch.nn.Parameter(torch.ones(8))
    opts = [
        runtime.adamw([kept, fp32], lr=1e-4, weight_decay=0.0),
        torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0),
    ]
    for _ in range(50):
        for opt, params in zip(opts, ([kept, fp32], [plain]), strict=True):
            opt.zero_grad(set_to_none=True)
            sum(p.float().sum() for p in params).backward()
            opt.step()
    assert torch.equal(plain, torch.ones(8, dtype=dtype))  # the problem: nothing moved
    master = opts[0].param_groups[0]["params"][0]
    assert master.dtype == torch.float32 and master is not kept
    assert torch.allclose(master, torch.full((8,), 1 - 50e-4), atol=1e-5)
    assert torch.equal(kept, master.to(dtype)) and bool((kept < 1).all())
    assert kept.grad is None  # the gradient moved to the master copy
    assert opts[0].param_groups[0]["params"][1] is fp32  # float32 needs no copy
    assert torch.allclose(fp32, master)
