"""Typed run configuration: dataclasses, named presets, overrides, and the resolved file.

Precedence is ``defaults < preset < file < command line``:

* the dataclass defaults below,
* a preset from ``configs/<name>.json`` or a JSON file given by path (a file may
  name the preset it builds on with ``"preset": "dtu"``),
* ``--set section.key=value`` (or ``--set key=value`` when ``key`` is unique across
  sections) and typed command-line options.

An unknown or misspelt key is an error, never silently added. The resolved config
is saved next to every run (``config.json``) and loads back to an equal config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from neus2cli.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    """The SDF and colour networks (NeuS2's architecture)."""

    n_levels: int = 14
    """Hash-grid levels."""
    n_features_per_level: int = 2
    """Features stored per hash-grid entry."""
    log2_hashmap_size: int = 19
    """log2 of the entries per hash-grid level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    finest_resolution: int = 2048
    """Finest grid resolution; sets the per-level scale."""
    sdf_hidden: int = 64
    """Width of the SDF MLP's hidden layer."""
    sdf_outputs: int = 16
    """SDF MLP outputs: channel 0 is the SDF, the rest a geometry feature."""
    sdf_bias: float = -0.1
    """Constant added to the SDF output; with geometric init the initial surface is a sphere of this radius."""
    color_hidden: int = 64
    """Width of the colour MLP's hidden layers."""
    color_layers: int = 2
    """Hidden layers of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics degree of the view-direction encoding."""
    init_variance: float = 0.3
    """Initial v of the sharpness s = exp(10 v)."""
    sdf_gradient: Literal["closed_form", "autograd"] = "closed_form"
    """How training differentiates the SDF gradient: closed_form (NeuS2's: the ReLU MLP's input gradient and
    its parameter derivatives as a few matmuls, autograd only through the hash grid; fast) or autograd (the
    generic double backward through the whole network; the reference)."""


@dataclass
class SamplingConfig:
    """Occupancy grid and ray marching (in the normalized unit cube)."""

    grid_resolution: int = 128
    """Occupancy-grid cells per axis over the unit cube."""
    grid_ema_decay: float = 0.95
    """EMA decay of the occupancy values."""
    grid_threshold: float = 0.1
    """Occupancy threshold: a cell is occupied above min(threshold, mean occupancy)."""
    grid_warmup_steps: int = 256
    """Steps during which every cell is re-evaluated at each update."""
    grid_update_every: int = 16
    """Update the occupancy grid every this many steps."""
    step_size: float = math.sqrt(3) / 1024
    """Fixed marching step in normalized units."""
    early_stop_eps: float = 1e-4
    """Stop marching a ray when its transmittance falls below this."""
    target_samples: int = 2**18
    """Samples per batch; the ray count adapts every step to hold it."""
    initial_rays: int = 4096
    """Rays in the first batch."""
    max_rays: int = 2**16
    """Upper bound on rays per batch."""
    max_samples_factor: int = 4
    """A batch whose samples exceed this many times ``target_samples`` (the ray count adapts one step
    late, e.g. after a grid update occupied many cells) trains on its leading rays only, bounding memory."""


@dataclass
class TrainConfig:
    """Optimisation schedule and losses."""

    steps: int = 15000
    """Training steps."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_final_factor: float = 0.1
    """Learning rate at the last step, as a fraction of ``lr`` (exponential decay after ``lr_decay_start``)."""
    lr_decay_start: float = 0.5
    """Fraction of the steps after which the learning rate starts to decay."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_eps: float = 1e-15
    weight_decay: float = 1e-6
    """L2 penalty on MLP weights only (not the hash table)."""
    ema_decay: float = 0.95
    """EMA of the weights used for rendering and meshing (0 disables)."""
    huber_delta: float = 0.1
    """Huber loss threshold on sRGB colour."""
    eikonal_weight: float = 0.01
    """Weight of mean((|grad f| - 1)^2) over all samples."""
    mask_weight: float = 0.0
    """Weight of the optional mask BCE on opacity (0 = off: masks act through random backgrounds)."""
    random_background: bool = True
    """Composite targets over a random colour per ray (how masks act)."""
    cos_anneal_steps: int = 0
    """Steps of NeuS cosine annealing (0 = off)."""
    progressive_start_levels: int = 4
    """Hash-grid levels active at the start of progressive training."""
    progressive_start_step: int = 200
    """Step after which more levels are enabled."""
    progressive_every: int = 50
    """Enable one more level every this many steps."""
    seed: int = 0
    """Random seed."""
    log_every: int = 25
    """Refresh the progress bar figures every this many steps."""
    checkpoint_every: int = 2000
    """Save a resumable checkpoint every this many steps (and on Ctrl-C)."""


@dataclass
class OutputConfig:
    """What a run writes at the end."""

    mesh_resolution: int = 512
    """Marching-cubes grid resolution of the final mesh."""
    mesh_color: bool = True
    """Colour mesh vertices with the colour network."""
    remove_floaters: float = 0.05
    """Drop connected components with fewer than this fraction of the largest one's faces (0 keeps all)."""
    render_test_views: int = 8
    """Render at most this many test views for metrics (0 = none)."""
    render_chunk: int = 32768
    """Rays per rendering chunk."""


@dataclass
class DynamicConfig:
    """Incremental training of a sequence (``neus2 train-dynamic``)."""

    first_frame_steps: int = 2000
    """Steps for frame 0 (from scratch)."""
    next_frame_steps: int = 1300
    """Steps for each later frame, global-movement phase included."""
    predict_global_movement: bool = True
    """Optimise a per-frame rigid transform before training the field."""
    global_movement_steps: int = 100
    """Steps of the transform-only phase."""
    global_movement_lr: float = 5e-3
    """Adam learning rate of the rigid transform."""
    joint_movement_lr_factor: float = 0.1
    """Learning-rate factor of the rigid transform while the field trains too (0 freezes it). Below 1
    because Adam at the full rate keeps the pose jittering by about a step size (~0.3 degree per step)."""
    max_retries: int = 2
    """Retries of a diverged frame (each doubles the global-movement phase)."""
    freeze_sharpness: bool = True
    """Later frames keep the sharpness s they start from (frame 0's) instead of learning it further:
    learned frame after frame it grows without bound (40x in 5 frames of a test sequence), until the
    surface is far sharper than the marching step resolves, geometry gradients vanish and tracking fails."""
    center_on_masks: bool = True
    """Shift the normalized frame (same scale) so the object, located by the visual hull of the masks,
    sits at the cube centre: the first frame's in incremental mode (the canonical frame every later
    frame is mapped into), each frame's own in per-frame mode. A sequence's normalization usually spans
    the whole motion, which leaves the first frame's object near a face of the cube."""


@dataclass
class Config:
    """Everything a run needs besides the scene. Saved as ``config.json`` in every run."""

    preset: str = "base"
    """Name of the preset this config was built on (informational)."""
    backend: Literal["auto", "tcnn", "torch"] = "auto"
    """Compute path: tcnn (tinycudann + nerfacc on CUDA), torch (pure PyTorch, CPU or GPU), or auto."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from neus2cli.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


SECTIONS = ("model", "sampling", "train", "output", "dynamic")
_TOP_LEVEL = ("preset", "backend")


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Convert ``value`` (from JSON or a ``--set`` string) to the field's type."""
    ann = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None
    if ann is not None:
        if value not in ann:
            raise UserError(f"config key '{key}' must be one of {list(ann)}, got {value!r}.", path=source)
        return value
    kind = annotation
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool | int):
                return bool(value)
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError(value)
            return int(as_float)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(
            f"config key '{key}' expects a {kind.__name__}, got {value!r}.",
            path=source,
            hint="Fix the value and run again.",
        ) from None
    raise TypeError(f"unsupported config field type {annotation!r}")


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _section_class(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _apply_dict(cfg: Config, data: dict[str, Any], source: str) -> None:
    """Overlay a (possibly partial) nested dict onto ``cfg``; unknown keys are errors."""
    for key, value in data.items():
        if key in _TOP_LEVEL:
            setattr(cfg, key, _coerce(value, typing.get_type_hints(Config)[key], key, source))
            continue
        if key not in SECTIONS:
            raise UserError(
                f"unknown config section or key '{key}'.",
                path=source,
                hint=f"Valid top-level keys: {', '.join(_TOP_LEVEL + SECTIONS)}.",
            )
        if not isinstance(value, dict):
            raise UserError(f"config section '{key}' must be an object.", path=source)
        section = getattr(cfg, key)
        types = _field_types(type(section))
        for sub, sub_value in value.items():
            if sub not in types:
                raise UserError(
                    f"unknown config key '{key}.{sub}'.",
                    path=source,
                    hint=f"Valid keys in '{key}': {', '.join(types)}.",
                )
            setattr(section, sub, _coerce(sub_value, types[sub], f"{key}.{sub}", source))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("config file not found.", path=path, hint=f"Presets: {', '.join(list_presets())}.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"config file is not valid JSON ({err}).", path=path) from None
    if not isinstance(data, dict):
        raise UserError("config file must hold a JSON object.", path=path)
    return data


def _preset_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" or candidate.exists():
        return candidate
    path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise UserError(
            f"unknown config preset '{name_or_path}'.",
            hint=f"Use one of {', '.join(list_presets())} or a path to a JSON file.",
        )
    return path


def load_config_layers(name_or_path: str, depth: int = 0) -> Config:
    """Defaults, then the preset chain named by ``"preset"`` keys, then the file itself."""
    if depth > 8:
        raise UserError("config presets refer to each other in a loop.", path=name_or_path)
    path = _preset_path(name_or_path)
    data = _read_json(path)
    parent = data.pop("preset", None)
    cfg = load_config_layers(parent, depth + 1) if parent and Path(path).stem != parent else Config()
    _apply_dict(cfg, data, str(path))
    cfg.preset = path.stem if path.parent == CONFIG_DIR else str(path)
    return cfg


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, str] | str]:
    """``["train.steps=500", "lr=1e-2"]`` -> nested dict; bare keys resolve to their unique section."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got '{pair}'.", hint="Example: --set train.steps=500")
        key, value = (s.strip() for s in pair.split("=", 1))
        if "." in key:
            section, sub = key.split(".", 1)
        elif key in _TOP_LEVEL:
            nested[key] = value
            continue
        else:
            owners = [s for s in SECTIONS if key in _field_types(_section_class(s))]
            if len(owners) != 1:
                where = f"it is in {', '.join(owners)}" if owners else "no section has it"
                raise UserError(
                    f"--set key '{key}' is ambiguous or unknown ({where}).",
                    hint="Write it as section.key, e.g. train.steps=500.",
                )
            section, sub = owners[0], key
        nested.setdefault(section, {})[sub] = value
    return nested


def resolve_config(preset: str = "base", overrides: list[str] | None = None, **typed: Any) -> Config:
    """Build the run config: preset (name or file) < ``--set`` pairs < typed options (non-None)."""
    cfg = load_config_layers(preset)
    if overrides:
        _apply_dict(cfg, parse_overrides(overrides), "--set")
    typed_nested = parse_overrides([f"{k}={v}" for k, v in typed.items() if v is not None])
    _apply_dict(cfg, typed_nested, "command line")
    return cfg


def config_from_dict(data: dict[str, Any], source: str = "config.json") -> Config:
    """Inverse of ``Config.to_dict`` (used to load a run's saved config)."""
    cfg = Config()
    data = dict(data)
    _apply_dict(cfg, data, source)
    return cfg


def load_run_config(path: str | Path) -> Config:
    return config_from_dict(_read_json(Path(path)), str(path))
