import json

import pytest

from hvdat.attacks.budget import parse_eps
from hvdat.errors import UsageError
from hvdat.train.config import TrainConfig


@pytest.mark.parametrize(
    "text,value", [("8/255", 8 / 255), ("0.031", 0.031), (" 2 / 255 ", 2 / 255), ("1", 1.0), ("3e-2", 0.03), (0.5, 0.5)]
)
def test_parse_eps_accepts_fractions_and_decimals(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-0.1", "1.5", "300/255", "8/0", "eight", "8//255", "", "nan"])
def test_parse_eps_rejects_values_outside_the_unit_interval(text):
    with pytest.raises(UsageError):
        parse_eps(text)


def test_l2_and_l1_budgets_may_exceed_one():
    assert parse_eps("3", norm="l2") == 3.0 and parse_eps("12", norm="l1") == 12.0  # ImageNet's L2 3.0, AA's L1 12
    for text in ("0", "0/255", "-1"):
        with pytest.raises(UsageError, match="positive and finite|invalid eps"):
            parse_eps(text, norm="l2")


def test_config_round_trips_through_json(tmp_path):
    cfg = TrainConfig(arch="preact-resnet18", eps=4 / 255, milestones=(0.3, 0.6), np=4)
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "preact-resnet18"


def test_config_rejects_unknown_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"arch": "small-cnn", "bogus": 1}))
    with pytest.raises(UsageError, match="unknown keys"):
        TrainConfig.load(tmp_path / "config.json")


def test_eval_config_round_trips_through_json_and_names_a_missing_file(tmp_path):
    from hvdat.eval.config import EvalConfig

    cfg = EvalConfig(checkpoint="run/best.pt", dataset="digits", data_dir=None, eps=(1 / 255, 8 / 255), steps=5)
    cfg.save(tmp_path / "work" / "config.json")
    assert EvalConfig.load(tmp_path / "work" / "config.json") == cfg
    with pytest.raises(UsageError, match="no config at"):
        EvalConfig.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"arch": "nope"}, "unknown arch"),
        ({"dataset": "nope"}, "unknown dataset"),
        ({"attack": "nope"}, "unknown attack"),
        ({"optimizer": "adamw2"}, "unknown optimizer"),
        ({"compression": "zip"}, "unknown compression"),
        ({"schedule": "wave"}, "unknown schedule"),
        ({"norm": "l1"}, "does not support norm"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr_scaling": "cubic"}, "--lr-scaling"),
        ({"dataset": "cifar10", "data_dir": "/nonexistent"}, "does not exist"),
        ({"dataset": "imagefolder"}, "needs --data-dir"),
        ({"compression": "ef-sign", "optimizer": "lamb"}, "ef-sign needs --optimizer sgd"),
    ],
)
def test_validate_names_the_problem(change, fragment):
    with pytest.raises(UsageError, match=fragment):
        TrainConfig(**change).validate()
