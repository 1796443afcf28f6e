"""TrainConfig keeps mlx-lm's lora names, defaults and precedence; the events survive JSON;
the training modules import no UI library."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import BadSetting
from jobs import events as ev
from jobs.channel import ProtocolError
from jobs.config import CONFIG_DEFAULTS, PRESETS, TrainConfig, read_config_file

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_yaml_loader_are_mlx_lms(tmp_path):
    from mlx_lm import lora

    assert CONFIG_DEFAULTS == lora.CONFIG_DEFAULTS
    import yaml

    text = "learning_rate: 1e-5\nlr_schedule:\n  arguments: [2e-4, 100, 1.0e-6]\niters: 10\n"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert read_config_file(path) == yaml.load(text, lora.yaml_loader)
    assert isinstance(read_config_file(path)["learning_rate"], float)


def test_mlx_args_are_the_namespace_mlx_lm_lora_builds():
    """Same keys as `mlx_lm lora` (its parser's and CONFIG_DEFAULTS'), same values."""
    from mlx_lm import lora

    parser_keys = {a.dest for a in lora.build_parser()._actions if a.dest != "help"}
    args = TrainConfig(model="m", data="d").to_mlx_args()
    assert set(args) == parser_keys | set(CONFIG_DEFAULTS)
    expected = dict(CONFIG_DEFAULTS, model="m", data="d", train=True)
    assert args == expected


def test_precedence_flags_over_file_over_preset_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iters: 7\nbatch_size: 3\nlora_parameters: {rank: 2, scale: 1.0, "
                    "dropout: 0.0}\nprompt_feature: question\n")
    config = TrainConfig.from_args({"model": "m", "data": "d", "config": str(path),
                                    "batch_size": 5, "learning_rate": None}, preset="quick")
    assert config.batch_size == 5  # the flag
    assert config.iters == 7  # the file, over the preset's 50
    assert config.learning_rate == PRESETS["quick"]["learning_rate"]  # the preset
    assert config.optimizer == "adam"  # mlx-lm's default
    args = config.to_mlx_args()
    assert args["lora_parameters"] == {"rank": 2, "scale": 1.0, "dropout": 0.0}
    assert args["prompt_feature"] == "question"  # a file's other keys reach mlx-lm
    assert args["config"] == str(path)
    ns = argparse.Namespace(model="m", data="d", iters=3, command="train", temperature=0.7)
    assert "temperature" not in TrainConfig.from_args(ns).to_mlx_args()


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"fine_tune_type": "qlora"},
                                 {"patience": 0}, {"valid_share": 1.0}, {"num_layers": -2},
                                 {"lora_parameters": {"rank": 8, "alpha": 16}}])
def test_bad_values_are_one_line(bad):
    with pytest.raises(BadSetting) as info:
        TrainConfig.from_args({"model": "m", "data": "d", **bad})
    assert "\n" not in str(info.value)


def test_presets_are_valid():
    for name in PRESETS:
        TrainConfig.from_args({"model": "m", "data": "d"}, preset=name)


def test_events_round_trip_through_json():
    events = [
        ev.TrainStarted("/a", 10, 8, 2, 1234, 5678),
        ev.TrainProgress(5, 2.5, 1e-4, 3.2, 400.0, 2000, 10_000_000, 12.5),
        ev.ValProgress(4, 2.4, 4, 2.4),
        ev.TrainNotice("hello"),
        ev.TrainFinished("/a", 10, 4, 2.4, False, 12.0),
        ev.TrainFailed("no", "crashed"),
    ]
    for event in events:
        assert ev.from_json(ev.to_json(event)) == event
    with pytest.raises(ProtocolError):
        ev.from_json("not json")


def test_training_modules_import_no_ui_library():
    code = ("import importlib, sys\n"
            "for m in ('config', 'data', 'estimate', 'folder', 'events', 'runner', 'child'):\n"
            "    importlib.import_module('jobs.' + m)\n"
            "print([m for m in ('textual', 'rich', 'prompt_toolkit') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
