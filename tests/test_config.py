"""Config presets, precedence, unknown keys, and the saved-config round trip."""

from __future__ import annotations

import json

import pytest

from neus2cli.config import Config, list_presets, load_run_config, resolve_config
from neus2cli.errors import UserError


def test_presets_exist_and_load():
    assert {"base", "dtu", "fast", "demo", "demo-gpu"} <= set(list_presets())
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


# --------------------------------------------------------------------------- presets are package data


def test_a_preset_by_path_resolves_as_by_name(tmp_path):
    from neus2cli.config import preset_dir

    by_path = resolve_config(str(preset_dir() / "dtu.json"))
    assert by_path == resolve_config("dtu") and by_path.preset == "dtu"
    # A user's file that happens to be called dtu.json builds on the dtu *preset* (it used to get the defaults).
    mine = tmp_path / "dtu.json"
    mine.write_text(json.dumps({"preset": "dtu", "train": {"steps": 5}}))
    cfg = resolve_config(str(mine))
    assert cfg.train.lr == 1e-2 and cfg.train.progressive_every == 50 and cfg.train.steps == 5


def test_preset_loops_are_errors(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"preset": str(b)}))
    b.write_text(json.dumps({"preset": str(a)}))
    with pytest.raises(UserError, match="loop"):
        resolve_config(str(a))


# --------------------------------------------------------------------------- ranges (issue #11)

BAD_VALUES = [
    ("model.n_levels", "0"),
    ("model.n_levels", "129"),
    ("model.n_features_per_level", "3"),
    ("model.sh_degree", "0"),
    ("model.finest_resolution", "8"),  # below base_resolution (16)
    ("sampling.grid_resolution", "0"),
    ("sampling.step_size", "0"),
    ("sampling.step_size", "inf"),
    ("sampling.grid_ema_decay", "1.5"),
    ("sampling.target_samples", "0"),
    ("train.lr", "nan"),
    ("train.lr", "-1e-3"),
    ("train.steps", "0"),
    ("train.steps", "-5"),
    ("train.ema_decay", "1"),
    ("train.lr_decay_start", "2"),
    ("train.log_every", "0"),
    ("output.mesh_resolution", "0"),
    ("output.remove_floaters", "-0.1"),
    ("dynamic.first_frame_steps", "0"),
    ("dynamic.next_frame_steps", "-1"),
    ("dynamic.global_movement_steps", "-1"),
    ("dynamic.global_movement_lr", "0"),
    ("dynamic.max_retries", "-1"),
]


@pytest.mark.parametrize("key, value", BAD_VALUES)
def test_out_of_range_values_are_errors_naming_the_key(key, value):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        resolve_config("base", [f"{key}={value}"])
    assert info.value.exit_code == 2


def test_every_numeric_field_has_a_range():
    from neus2cli.config import RANGES, _flatten

    numeric = {
        k for k, v in _flatten(Config().to_dict()).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert numeric == set(RANGES)
    for name in list_presets():  # and the presets are inside them
        resolve_config(name)


def test_out_of_range_value_in_a_saved_config_is_an_error(tmp_path):
    cfg = resolve_config("fast")
    data = cfg.to_dict()
    data["output"]["mesh_resolution"] = 0
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="output.mesh_resolution"):
        load_run_config(tmp_path / "config.json")


# --------------------------------------------------------------------------- resume


def _request(preset=None, sets=(), **typed):
    from neus2cli.config import ConfigRequest

    return ConfigRequest(preset, tuple(sets), typed)


def test_resume_applies_what_is_safe_and_names_what_is_not():
    from neus2cli.config import resume_config

    stored = resolve_config("dtu", ["train.steps=100", "train.lr=0.02"])
    # The run's own command line again: nothing changes.
    cfg, changes = resume_config(stored, _request("dtu", ["train.steps=100", "train.lr=0.02"]))
    assert cfg == stored and changes == {}
    # No --config on resume: the run's config, not the command's default preset.
    cfg, changes = resume_config(stored, _request(None, ["output.mesh_resolution=64"], **{"train.steps": 300}))
    assert cfg.train.steps == 300 and cfg.output.mesh_resolution == 64 and cfg.train.lr == 0.02
    assert changes == {"train.steps": (100, 300), "output.mesh_resolution": (512, 64)}
    cfg, changes = resume_config(stored, _request(backend="torch"))
    assert cfg.backend == "torch" and changes == {"backend": ("auto", "torch")}
    with pytest.raises(UserError, match=r"--set train\.lr=0\.5.*train\.lr"):
        resume_config(stored, _request(None, ["train.lr=0.5"]))
    with pytest.raises(UserError, match="--config base"):  # base sets train.lr 1e-3
        resume_config(stored, _request("base"))
    with pytest.raises(UserError, match="train.steps"):  # still range-checked
        resume_config(stored, _request(**{"train.steps": 0}))


def test_check_resumable_names_the_key():
    from neus2cli.config import check_resumable

    stored = resolve_config("fast")
    changed = resolve_config("fast", ["train.steps=900", "output.render_test_views=0"])
    assert check_resumable(stored, changed) == {"train.steps": (400, 900), "output.render_test_views": (2, 0)}
    with pytest.raises(UserError, match="model.n_levels"):
        check_resumable(stored, resolve_config("fast", ["model.n_levels=4"]))


def test_demo_preset_follows_the_backend():
    # `neus2 train` with no scene: the CPU-sized demo unless the tinycudann path runs.
    from neus2cli.config import demo_preset

    assert demo_preset("torch") == "demo" and demo_preset("tcnn") == "demo-gpu"
    gpu = resolve_config("demo-gpu")
    assert gpu.sampling.target_samples == 2**18 and gpu.train.steps == 2000  # base's batch, a short run
