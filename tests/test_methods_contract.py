"""The contract every registered method keeps, on tiny GPT-2, GPT-NeoX and Llama models.

For every method x family, from the method's default config: it runs, the input model is
bit-identical afterwards, the output differs and is finite; neuron- and weight-mask methods leave
everything outside their mask bit-identical and mask exactly the requested amount; dampening only
shrinks weights.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unmemorize.methods import METHODS, NothingToUnlearnError, UnlearnData, build_method
from unmemorize.mlp import MLPAdapter
from unmemorize.registry import UnknownNameError

from .zoo import V, make_model

CONTRACT_FAMILIES = ["gpt2", "gpt_neox", "llama"]
T = 12

#: The 11 unlearning methods, 3 fine-tuning recipes, SSD and the 6 gradient methods promised.
EXPECTED_METHODS = {
    "zero_out",
    "activations",
    "slimming",
    "hard_concrete",
    "integrated_gradients",
    "greedy",
    "durable",
    "durable_agg",
    "second_order",
    "subnet",
    "balanced_subnet",
    "finetune_clean",
    "finetune_extra",
    "finetune_both",
    "ssd",
    "ga",
    "grad_diff",
    "kl",
    "npo",
    "simnpo",
    "task_vector",
}

PER_MATRIX = {"durable", "second_order", "subnet", "balanced_subnet"}
GLOBAL = {"durable_agg", "greedy"}


def tiny_data() -> UnlearnData:
    """4 forget rows over tokens 40..49 (a 'memorized' pattern) and 16 retain rows over 2..39."""
    g = torch.Generator().manual_seed(0)
    forget = torch.randint(40, V, (4, T), generator=g)
    retain = torch.randint(2, 40, (16, T), generator=g)
    clean = forget.clone()
    clean[:, 6:] = torch.randint(2, 40, (4, T - 6), generator=g)
    return UnlearnData(
        forget_ids=forget,
        retain_ids=retain,
        pad_id=None,
        forget_prefix_len=torch.full((4,), 6),
        forget_clean_ids=clean,
    )


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_promised_method_is_registered() -> None:
    assert set(METHODS.names()) == EXPECTED_METHODS


@pytest.mark.parametrize("family", CONTRACT_FAMILIES)
@pytest.mark.parametrize("name", sorted(EXPECTED_METHODS))
def test_method_contract(name: str, family: str) -> None:
    model = make_model(family, n_layers=2)
    before = snapshot(model)
    method = build_method(name)
    result = method.apply(model, tiny_data())

    after_input = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after_input[key], value), f"{name} mutated the input model ({key})"

    edited = result.model
    assert edited is not model
    new = edited.state_dict()
    changed = [k for k in before if not torch.equal(new[k], before[k])]
    assert changed, f"{name} left the model unchanged"
    for key, value in new.items():
        assert torch.isfinite(value).all(), f"{name} produced non-finite {key}"
    assert result.seconds >= 0
    assert 0 < result.changed_fraction <= 1
    with torch.no_grad():
        logits = edited(tiny_data().forget_ids).logits
    assert torch.isfinite(logits).all()

    cls = METHODS.get(name)
    adapter = MLPAdapter(edited)
    mlp_names = {w.name for w in adapter.weight_matrices()}
    if cls.family in ("neuron", "weight"):
        outside = [k for k in changed if k not in mlp_names]
        assert not outside, f"{name} changed weights outside the MLP matrices: {outside}"
        zeroed = 0
        for w in adapter.weight_matrices():
            diff = new[w.name] != before[w.name]
            assert (new[w.name][diff] == 0).all(), f"{name} changed {w.name} other than by zeroing"
            zeroed += int(diff.sum())
        ratio = method.config.ratio
        if cls.family == "neuron":
            k = int(adapter.layer(0).width * ratio)
            for i in range(adapter.n_layers):
                rows = adapter.out_weight(i)  # [F, D]
                zero_rows = int((rows == 0).all(dim=1).sum())
                assert zero_rows == k, f"{name}: layer {i} has {zero_rows} removed neurons, not {k}"
            assert result.changed_count == k * adapter.n_layers
        elif name in PER_MATRIX:
            expected = sum(int(w.parameter.numel() * ratio) for w in adapter.weight_matrices())
            assert zeroed == expected, f"{name} zeroed {zeroed} MLP weights, expected {expected}"
            assert result.changed_count == expected
        elif name in GLOBAL:
            total = sum(w.parameter.numel() for w in adapter.weight_matrices())
            expected = int(total * ratio)
            assert zeroed == expected, f"{name} zeroed {zeroed} MLP weights, expected {expected}"
            assert result.changed_count == expected
    elif cls.family == "dampening":
        for key in changed:
            assert (new[key].abs() <= before[key].abs() + 1e-7).all(), f"{name} grew {key}"
    elif cls.family == "gradient":
        # Trained methods may move any parameter; the count must match what really changed.
        params = dict(edited.named_parameters())  # tied weights once
        moved = sum(int((p.detach() != before[k]).sum()) for k, p in params.items())
        assert result.changed_unit == "parameters"
        assert result.changed_count == moved > 0
        assert result.changed_fraction == moved / sum(p.numel() for p in params.values())
        with torch.no_grad():
            old_logits = model(tiny_data().forget_ids).logits
        assert not torch.equal(logits, old_logits), f"{name} left the forget logits unchanged"


@pytest.mark.parametrize("name", sorted(EXPECTED_METHODS))
def test_config_is_documented_and_validated(name: str) -> None:
    cls = METHODS.get(name)
    described = cls.describe()
    assert described["paper"], f"{name} names no paper"
    assert described["summary"], f"{name} has no docstring"
    for item in described["config"]:
        assert item["help"], f"{name}.{item['name']} has no docstring line"
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if "ratio" in fields:
        for bad in ("0", "1", "1.5", "-0.1"):
            with pytest.raises(ValueError, match="ratio"):
                build_method(name, [f"ratio={bad}"])


def test_unknown_method_and_option_suggest_the_nearest() -> None:
    with pytest.raises(UnknownNameError, match="balanced_subnet"):
        build_method("balanced_subnt")
    with pytest.raises(UnknownNameError, match="did you mean 'ratio'"):
        build_method("durable", ["rato=0.1"])
    with pytest.raises(ValueError, match="key=value"):
        build_method("durable", ["ratio"])


def test_unlearn_data_removes_forget_rows_from_retain_and_rejects_empty() -> None:
    data = tiny_data()
    both = UnlearnData(data.forget_ids, torch.cat([data.retain_ids, data.forget_ids[:2]]))
    assert both.n_retain == data.n_retain
    assert both.n_retain_overlap_removed == 2
    with pytest.raises(NothingToUnlearnError):
        UnlearnData(data.forget_ids[:0], data.retain_ids)
