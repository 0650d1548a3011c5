"""Config presets, precedence, unknown keys, and the saved-config round trip."""

from __future__ import annotations

import json

import pytest

from neus2cli.config import Config, list_presets, load_run_config, resolve_config
from neus2cli.errors import UserError


def test_presets_exist_and_load():
    assert {"base", "dtu", "fast", "demo"} <= set(list_presets())
    for name in list_presets():
        cfg = resolve_config(name)
        assert cfg.train.steps > 0


def test_precedence_defaults_preset_file_cli(tmp_path):
    base = resolve_config("base")
    dtu = resolve_config("dtu")
    assert base.train.lr == 1e-3 and dtu.train.lr == 1e-2  # preset beats defaults
    assert dtu.train.steps == 15000
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"preset": "dtu", "train": {"steps": 123}}))
    cfg = resolve_config(str(user), ["train.lr=0.5"], **{"train.steps": 77})
    assert cfg.train.lr == 0.5  # --set beats the file
    assert cfg.train.steps == 77  # typed option beats --set and file
    assert cfg.train.progressive_every == 50  # inherited from the dtu preset the file names
    cfg2 = resolve_config(str(user))
    assert cfg2.train.steps == 123 and cfg2.train.lr == 1e-2


def test_bare_keys_resolve_to_their_unique_section():
    cfg = resolve_config("base", ["first_frame_steps=10", "global_movement_steps=3", "steps=5"])
    assert cfg.dynamic.first_frame_steps == 10
    assert cfg.dynamic.global_movement_steps == 3
    assert cfg.train.steps == 5


@pytest.mark.parametrize(
    "pairs",
    [
        ["train.stepz=5"],
        ["trian.steps=5"],
        ["nonsense=1"],
        ["train.steps=abc"],
        ["train.steps=1.5"],
        ["noequals"],
    ],
)
def test_unknown_or_bad_keys_are_errors(pairs):
    with pytest.raises(UserError):
        resolve_config("base", pairs)


def test_unknown_key_in_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"stpes": 10}}))
    with pytest.raises(UserError, match="stpes"):
        resolve_config(str(bad))


def test_unknown_preset_names_the_choices():
    with pytest.raises(UserError, match="dtu"):
        resolve_config("dtuu")


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config("dtu", ["train.steps=42", "backend=torch", "train.random_background=false"])
    cfg.save(tmp_path / "config.json")
    again = load_run_config(tmp_path / "config.json")
    assert again == cfg
    assert isinstance(again, Config)
