"""Tests of typed configs, key=value overrides, the registry and the TinyMem presets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from unmemorize.benchmarks.tinymem.experiment import PRESETS, ExperimentConfig, make_experiment
from unmemorize.benchmarks.tinymem.math_data import MathDataConfig
from unmemorize.benchmarks.tinymem.text_data import TextDataConfig
from unmemorize.benchmarks.tinymem.train import TrainConfig
from unmemorize.config import (
    all_keys,
    apply_overrides,
    format_overrides,
    from_dict,
    parse_overrides,
    parse_value,
    set_path,
    to_dict,
)
from unmemorize.models import ModelConfig
from unmemorize.registry import Registry, UnknownNameError, suggest

# ---------------------------------------------------------------------------------- parse_value


@pytest.mark.parametrize(
    ("text", "annotation", "want"),
    [
        ("5", int, 5),
        ("-3", int, -3),
        ("0.25", float, 0.25),
        ("1e-3", float, 0.001),
        ("7", float, 7.0),
        ("true", bool, True),
        ("Yes", bool, True),
        ("1", bool, True),
        ("off", bool, False),
        ("FALSE", bool, False),
        ("hello world", str, "hello world"),
        ("none", str, "none"),
        ("anything", Any, "anything"),
        ("2,3", tuple[int, ...], (2, 3)),
        ("(2, 3, 4)", tuple[int, ...], (2, 3, 4)),
        ("[5]", tuple[int, ...], (5,)),
        ("", tuple[int, ...], ()),
        ("0.9,0.99", tuple[float, float], (0.9, 0.99)),
        ("none", int | None, None),
        ("null", Optional[str], None),  # noqa: UP045 - typing.Optional must work too
        ("None", str | None, None),
        ("12", int | None, 12),
        ("spectral_norm", str | None, "spectral_norm"),
        ('{"strength": 0.1}', dict, {"strength": 0.1}),
        ('{"a": {"b": [1, 2]}}', dict[str, Any], {"a": {"b": [1, 2]}}),
        ("{}", dict, {}),
    ],
)
def test_parse_value(text, annotation, want):
    got = parse_value(text, annotation)
    assert got == want
    assert type(got) is type(want)


@pytest.mark.parametrize(
    ("text", "annotation", "match"),
    [
        ("1.5", int, "expected an integer, got '1.5'"),
        ("abc", float, "expected a number, got 'abc'"),
        ("maybe", bool, "expected true/false, got 'maybe'"),
        ("2,x", tuple[int, ...], "expected an integer, got 'x'"),
        ("x", int | None, "expected an integer, got 'x'"),
        ("none", int, "expected an integer"),
        ("[1, 2]", dict, "expected a JSON object"),
        ("{strength: 1}", dict, "expected a JSON object"),
        ("3", list[int], "cannot parse a value of type"),
    ],
)
def test_parse_value_errors(text, annotation, match):
    with pytest.raises(ValueError, match=match):
        parse_value(text, annotation)


def test_parse_value_fixed_tuple_length():
    with pytest.raises(ValueError):
        parse_value("0.9", tuple[float, float])


# ------------------------------------------------------------------------------ overrides


@pytest.fixture
def mini() -> ExperimentConfig:
    return make_experiment("cpu-mini")


def test_apply_overrides(mini):
    exp = apply_overrides(
        mini,
        [
            "train.epochs=5",
            "model.n_layers=2",
            "data.extra_ks=2,3",
            "train.regularizer=none",
            'train.regularizer_options={"strength":0.1}',
            " train.lr = 0.01 ",
            "data.noise_prob=0.2",
            "model.init_std=0.05",
        ],
    )
    assert exp.train.epochs == 5
    assert exp.model.n_layers == 2
    assert exp.data.extra_ks == (2, 3)
    assert exp.train.regularizer is None
    assert exp.train.regularizer_options == {"strength": 0.1}
    assert exp.train.lr == 0.01
    assert exp.data.noise_prob == 0.2
    assert exp.model.init_std == 0.05
    # Everything else keeps the preset value.
    assert exp.model.d_model == 64 and exp.data.num_main == 1600 and exp.train.batch_size == 128
    assert (exp.preset, exp.task) == ("cpu-mini", "increment")


def test_override_sets_a_string_regularizer(mini):
    exp = apply_overrides(mini, ["train.regularizer=spectral_norm"])
    assert exp.train.regularizer == "spectral_norm"
    assert apply_overrides(exp, ["train.regularizer=None"]).train.regularizer is None


def test_overrides_return_a_copy(mini):
    before = to_dict(mini)
    exp = apply_overrides(
        mini,
        [
            "train.epochs=5",
            "model.n_layers=2",
            "data.extra_ks=2,3",
            'train.regularizer_options={"a":1}',
        ],
    )
    assert exp is not mini
    assert to_dict(mini) == before
    assert mini.train.epochs == 70
    assert mini.model.n_layers == 4
    assert mini.data.extra_ks == (2, 3, 4, 5)
    assert mini.train.regularizer_options == {}
    assert apply_overrides(mini, []) == mini


def test_unknown_key_suggests_nearest(mini):
    with pytest.raises(UnknownNameError, match="did you mean 'train.epochs'") as info:
        apply_overrides(mini, ["train.epoch=5"])
    assert "unknown config key 'train.epoch'" in str(info.value)
    assert "unmemorize ls keys" in str(info.value)
    with pytest.raises(UnknownNameError, match="did you mean 'model.n_layers'"):
        apply_overrides(mini, ["model.n_layer=2"])
    with pytest.raises(UnknownNameError, match="unknown config key 'trian.epochs'"):
        apply_overrides(mini, ["trian.epochs=5"])


@pytest.mark.parametrize("item", ["preset=x", "task=mult", "train=3", "data=1"])
def test_bare_top_level_key_is_an_error(mini, item):
    with pytest.raises(UnknownNameError, match="unknown config key"):
        apply_overrides(mini, [item])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("train.epochs", "is not of the form key=value"),
        ("train.epochs=abc", "bad value for train.epochs: expected an integer, got 'abc'"),
        ("train.epochs.x=1", "config key 'epochs' has no sub-keys"),
        ("train.regularizer_options=[1]", "bad value for train.regularizer_options"),
    ],
)
def test_override_errors(mini, item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(mini, [item])


def test_value_may_contain_equals_sign(mini):
    exp = apply_overrides(mini, ['train.regularizer_options={"expr": "a=b"}'])
    assert exp.train.regularizer_options == {"expr": "a=b"}


def test_parse_overrides_splits_at_the_first_equals_sign_and_strips():
    got = list(parse_overrides([" lr = 1e-4", 'opts={"a": "b=c"}'], example="lr=1"))
    assert got == [("lr", "1e-4"), ("opts", '{"a": "b=c"}')]
    with pytest.raises(
        ValueError, match=r"^method option 'ratio' is not of the form key=value \(e\.g\. r=1\)$"
    ):
        list(parse_overrides(["ratio"], what="method option", example="r=1"))


def test_format_overrides_sorts_keys_and_round_trips_through_parse():
    params = {"lr": 1e-4, "divergence": "kl", "layers": [0, 1], "lora": None, "on": True}
    items = format_overrides(params)
    assert items == ["divergence=kl", "layers=[0, 1]", "lora=null", "lr=0.0001", "on=true"]
    assert dict(parse_overrides(items, example="lr=1")) == {
        "divergence": "kl",
        "layers": "[0, 1]",
        "lora": "null",
        "lr": "0.0001",
        "on": "true",
    }


@dataclass
class _Leaf:
    x: int = 1
    name: str | None = None


@dataclass
class _Mid:
    leaf: _Leaf = field(default_factory=_Leaf)
    y: float = 0.5


@dataclass
class _Root:
    label: str = "root"
    mid: _Mid = field(default_factory=_Mid)


def test_set_path_and_all_keys_nested():
    root = _Root()
    assert all_keys(root) == ["mid.leaf.x", "mid.leaf.name", "mid.y"]
    old_mid = root.mid
    set_path(root, "mid.leaf.x", "7")
    assert root.mid.leaf.x == 7
    assert old_mid.leaf.x == 1  # sub-configs are replaced, not mutated
    copy = apply_overrides(root, ["mid.leaf.name=abc", "mid.y=2"])
    assert (copy.mid.leaf.name, copy.mid.y, copy.mid.leaf.x) == ("abc", 2.0, 7)
    assert (root.mid.leaf.name, root.mid.y) == (None, 0.5)
    with pytest.raises(UnknownNameError, match="did you mean 'mid.leaf.x'"):
        set_path(root, "mid.leaf", "3")  # a sub-config is not a leaf


def test_all_keys_of_an_experiment(mini):
    want = (
        [f"data.{f.name}" for f in dataclasses.fields(MathDataConfig)]
        + [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]
        + [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)]
    )
    assert all_keys(mini) == want
    assert {"train.epochs", "model.n_layers", "data.extra_ks"} <= set(want)


# ------------------------------------------------------------------------ to_dict / from_dict


@pytest.mark.parametrize(
    ("preset", "task", "variant"),
    [
        ("cpu-mini", "increment", "noise"),
        ("cpu-mini", "mult", "backdoor"),
        ("paper", "increment", "noise"),
        ("cpu-mini", "text", "noise"),
        ("paper", "text", "backdoor"),
    ],
)
def test_experiment_round_trip(preset, task, variant):
    exp = make_experiment(
        preset, task, variant, ['train.regularizer_options={"strength": 0.1, "k": [1, 2]}']
    )
    d = exp.to_dict()
    assert json.loads(json.dumps(d)) == d  # JSON-able
    back = ExperimentConfig.from_dict(json.loads(json.dumps(d)))
    assert back == exp
    assert type(back.data) is (TextDataConfig if task == "text" else MathDataConfig)
    assert isinstance(back.train.betas, tuple)
    assert isinstance(back.data.duplicate_powers, tuple)


def test_to_dict_exact(mini):
    d = to_dict(mini)
    assert list(d) == ["preset", "task", "data", "model", "train"]
    assert d["data"]["extra_ks"] == [2, 3, 4, 5]
    assert d["train"]["betas"] == [0.9, 0.98]
    assert d["model"] == {
        "arch": "gpt2",
        "n_layers": 4,
        "d_model": 64,
        "n_heads": 4,
        "mlp_ratio": 4,
        "context_length": 64,
        "init_std": None,
    }


def test_from_dict_unknown_key_suggests():
    with pytest.raises(
        UnknownNameError, match="unknown TrainConfig key 'epoch': did you mean 'epochs'"
    ):
        from_dict(TrainConfig, {"epoch": 3})
    assert from_dict(ModelConfig, {"n_layers": 2}) == ModelConfig(n_layers=2)


# -------------------------------------------------------------------------------- presets


def test_presets_registered():
    assert PRESETS.names() == ["cpu-mini", "paper"]
    assert "paper" in PRESETS and len(PRESETS) == 2


def test_cpu_mini_preset_values(mini):
    assert (mini.data.num_main, mini.data.num_noise, mini.data.num_test) == (1600, 100, 500)
    assert (mini.data.context_length, mini.data.prefix_len, mini.data.suffix_len) == (64, 32, 32)
    assert (mini.model.n_layers, mini.model.d_model, mini.model.context_length) == (4, 64, 64)
    assert (mini.train.epochs, mini.train.checkpoint_every) == (70, 10)
    assert (mini.train.lr, mini.train.lr_schedule) == (2e-3, "cosine")
    assert make_experiment("cpu-mini", "increment", "backdoor").train.epochs == 40


def test_paper_preset_values():
    exp = make_experiment("paper", "mult", "noise")
    assert exp.data == MathDataConfig(task="mult")
    assert exp.model == ModelConfig()
    assert (exp.train.epochs, exp.train.checkpoint_every, exp.train.lr) == (3500, 50, 1e-3)
    assert make_experiment("paper", "increment", "backdoor").train.epochs == 500
    text = make_experiment("paper", "text", "noise")
    assert text.data == TextDataConfig()
    assert (text.train.epochs, text.train.checkpoint_every) == (100, 10)


def test_make_experiment_applies_and_validates_overrides():
    exp = make_experiment("cpu-mini", overrides=["train.epochs=5", "data.seed=3"])
    assert (exp.train.epochs, exp.data.seed) == (5, 3)
    with pytest.raises(UnknownNameError, match="did you mean 'gpt2'"):
        make_experiment("cpu-mini", overrides=["model.arch=gpt-2"])
    with pytest.raises(ValueError, match="lr must be a positive number"):
        make_experiment("cpu-mini", overrides=["train.lr=0"])
    with pytest.raises(ValueError, match="num_noise is larger"):
        make_experiment("cpu-mini", overrides=["data.num_noise=5000"])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("cpu_mini",), "unknown preset 'cpu_mini': did you mean 'cpu-mini'"),
        (("papr",), "did you mean 'paper'"),
        (("cpu-mini", "incrment"), "unknown task 'incrment': did you mean 'increment'"),
        (("cpu-mini", "txt"), "did you mean 'text'"),
        (
            ("cpu-mini", "increment", "backdor"),
            "unknown variant 'backdor': did you mean 'backdoor'",
        ),
    ],
)
def test_make_experiment_unknown_names(args, match):
    with pytest.raises(UnknownNameError, match=match):
        make_experiment(*args)


def test_make_experiment_context_mismatch():
    with pytest.raises(
        ValueError,
        match=r"data.context_length \(100\) and model.context_length \(64\) must be equal",
    ):
        make_experiment("cpu-mini", overrides=["data.context_length=100"])
    exp = make_experiment(
        "cpu-mini", overrides=["data.context_length=100", "model.context_length=100"]
    )
    assert exp.data.context_length == exp.model.context_length == 100


# ------------------------------------------------------------------------------- registry


def test_registry_register_and_get():
    reg: Registry = Registry("widget")

    @reg.register("blue-box")
    def blue_box():
        return "blue"

    reg.register("red-box")(lambda: "red")
    assert reg.get("blue-box") is blue_box
    assert reg.get("red-box")() == "red"
    assert reg.names() == ["blue-box", "red-box"]
    assert list(reg) == ["blue-box", "red-box"]
    assert len(reg) == 2 and "red-box" in reg and "green" not in reg


def test_registry_register_twice_raises():
    reg: Registry = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a")(2)
    assert reg.get("a") == 1


def test_registry_unknown_name_suggests():
    reg: Registry = Registry("widget")
    for name in ("balanced_subnet", "subnet", "greedy"):
        reg.register(name)(name)
    with pytest.raises(UnknownNameError) as info:
        reg.get("balanced_subnt")
    assert str(info.value) == (
        "unknown widget 'balanced_subnt': did you mean 'balanced_subnet' or 'subnet'? "
        "choose one of: balanced_subnet, greedy, subnet"
    )
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="unknown widget 'zzz': choose one of"):
        reg.get("zzz")


def test_suggest_omits_long_listings():
    choices = [f"key{i}" for i in range(20)]
    err = suggest("key3x", choices, "config key", "(see docs)")
    assert (
        str(err)
        == "unknown config key 'key3x': did you mean 'key3' or 'key13' or 'key9'? (see docs)"
    )
