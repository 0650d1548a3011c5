"""Typed run configuration: dataclasses, named presets, overrides, and the resolved file.

Precedence is ``defaults < preset < file < command line``:

* the dataclass defaults below,
* a preset (package data ``neus2cli.presets``, the repository's ``configs/`` folder) by name,
  or a JSON file given by path (a file may name the preset it builds on with ``"preset": "dtu"``;
  that always means the packaged preset, whatever the file is called),
* ``--set section.key=value`` (or ``--set key=value`` when ``key`` is unique across
  sections) and typed command-line options.

An unknown or misspelt key is an error, never silently added, and every value is checked
against its field's range (``check_ranges``). The resolved config is saved next to every run
(``config.json``) and loads back to an equal config. A resumed run keeps its config; options
given with ``--resume`` may change only the keys in ``RESUMABLE`` (``resume_config``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from neus2cli.errors import UserError
from neus2cli.io import atomic_write_text

# The presets are package data: the repository's configs/ folder, installed as ``neus2cli.presets``
# (pyproject.toml maps the package onto the folder).
PRESET_PACKAGE = "neus2cli.presets"
_SOURCE_PRESETS = Path(__file__).resolve().parents[1] / "configs"


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
    background: Literal["none", "nerfpp"] = "none"
    """What explains the pixels outside the object: none (masked captures: masks and random backgrounds
    leave only the object) or nerfpp (unmasked captures: NeRF++'s inverted-sphere field outside the sphere
    around the unit cube, composited behind the object; training targets are then the images' own colours)."""
    background_samples: int = 32
    """Background samples per ray, evenly spaced in inverse distance (a fixed count: fixed shapes)."""
    background_hidden: int = 64
    """Width of the background MLP."""
    background_frequencies: int = 6
    """Frequencies of the background's positional encoding of (direction, inverse distance)."""


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
    """Weight of the optional mask BCE on opacity (0 = off: masks act through random backgrounds); off for a
    scene without masks whatever its value."""
    random_background: bool = True
    """Composite targets over a random colour per ray (how masks act; no effect with a background model,
    whose last sample is opaque)."""
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
    cuda_graph: bool = True
    """On CUDA, capture the (fixed-shape) training step once as a CUDA graph and replay it."""


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
    chunk_frames: int = 0
    """Frames per chunk: the sequence is cut into contiguous chunks that train independently (each from
    scratch at its first frame), one or more per rank of a torchrun launch; 0 splits it evenly over the
    ranks (one chunk for a single process). Fixed when the run starts (run.json's plan)."""
    chunk_overlap: int = 0
    """Frames before each chunk's start (from the chunk before) trained first but not written, so that the
    chunk's first frame starts from a fitted state instead of from scratch (0: none)."""


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
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


SECTIONS = ("model", "sampling", "train", "output", "dynamic")
_TOP_LEVEL = ("preset", "backend")


def preset_dir() -> Traversable:
    """The folder of the named presets.

    Imported from a source checkout (a ``pyproject.toml`` beside the package: ``PYTHONPATH`` or an
    editable install), that checkout's own ``configs/``; installed, the package data.
    """
    if (_SOURCE_PRESETS.parent / "pyproject.toml").is_file() and _SOURCE_PRESETS.is_dir():
        return _SOURCE_PRESETS
    return importlib.resources.files(PRESET_PACKAGE)


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in preset_dir().iterdir() if p.name.endswith(".json"))


def demo_preset(backend: str) -> str:
    """The preset of the bundled demo scene: ``demo`` sized for 2 CPU cores, ``demo-gpu`` for the tcnn path."""
    return "demo-gpu" if backend == "tcnn" else "demo"


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


def _read_json(path: Path | Traversable) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("config file not found.", path=path, hint=f"Presets: {', '.join(list_presets())}.") from None
    except json.JSONDecodeError as err:
        raise UserError(f"config file is not valid JSON ({err}).", path=path) from None
    if not isinstance(data, dict):
        raise UserError("config file must hold a JSON object.", path=path)
    return data


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".json") or "/" in name_or_path or Path(name_or_path).exists()


def _preset_file(name: str) -> Traversable:
    path = preset_dir() / f"{name}.json"
    if not path.is_file():
        raise UserError(
            f"unknown config preset '{name}'.",
            hint=f"Use one of {', '.join(list_presets())} or a path to a JSON file.",
        )
    return path


def _same_file(path: Path, preset: Traversable) -> bool:
    return isinstance(preset, Path) and path.resolve() == preset.resolve()


def _layers(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[Config, dict[str, Any], str]:
    """(config, the keys the chain of files sets as a flat ``section.key`` dict, the preset's name).

    A name is a packaged preset; a path is a file, whose ``"preset"`` key names the packaged preset
    it builds on. A file that is a packaged preset resolves exactly as its name does.
    """
    if _is_path(name_or_path):
        path = Path(name_or_path)
        named = next((n for n in list_presets() if _same_file(path, preset_dir() / f"{n}.json")), None)
        source, label = (path, str(path)) if named is None else (_preset_file(named), named)
    else:
        source, label = _preset_file(name_or_path), name_or_path
    if label in seen:
        raise UserError("config presets refer to each other in a loop.", path=" -> ".join([*seen, label]))
    data = _read_json(source)
    parent = data.pop("preset", None)
    if parent is not None and not isinstance(parent, str):
        raise UserError("the config key 'preset' must name a preset.", path=source)
    if parent:
        cfg, explicit, _ = _layers(parent if _is_path(parent) else parent, (*seen, label))
    else:
        cfg, explicit = Config(), {}
    _apply_dict(cfg, data, str(source))
    explicit.update(_flatten(data))
    cfg.preset = label
    return cfg, explicit, label


def load_config_layers(name_or_path: str) -> Config:
    """Defaults, then the preset chain named by ``"preset"`` keys, then the file itself."""
    return _layers(name_or_path)[0]


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Nested config dict -> ``{"section.key": value}`` (top-level keys stay bare)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def get_key(cfg: Config, key: str) -> Any:
    """The value of ``section.key`` (or a top-level key) in ``cfg``."""
    if "." not in key:
        return getattr(cfg, key)
    section, sub = key.split(".", 1)
    return getattr(getattr(cfg, section), sub)


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
    return resolve_request(ConfigRequest(preset, tuple(overrides or ()), typed))


@dataclass(frozen=True)
class ConfigRequest:
    """What a command line asks for: ``--config`` (None: the command's default), ``--set`` pairs and
    typed options as ``{"section.key": value}`` (None values: not given)."""

    preset: str | None = None
    overrides: Sequence[str] = ()
    typed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default_preset: str = "base"


def resolve_request(request: ConfigRequest) -> Config:
    """A new run's config: preset < ``--set`` < typed options, range-checked."""
    cfg = load_config_layers(request.preset or request.default_preset)
    if request.overrides:
        _apply_dict(cfg, parse_overrides(list(request.overrides)), "--set")
    _apply_dict(cfg, parse_overrides(_typed_pairs(request.typed)), "command line")
    check_ranges(cfg)
    return cfg


def _typed_pairs(typed: Mapping[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in typed.items() if v is not None]


#: The command-line options that set a config key directly (named in messages).
TYPED_OPTIONS = {"train.steps": "--steps", "backend": "--backend"}

#: What a resumed run may change: how long it trains, what it writes, and where it computes.
RESUMABLE = ("backend", "train.steps", "train.log_every", "train.checkpoint_every", "train.cuda_graph", "output.*")


def is_resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".*") and key.startswith(r[:-1])) for r in RESUMABLE)


def _differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
    return {k: (a[k], b[k]) for k in a if k != "preset" and a[k] != b[k]}


#: Why some keys cannot change on resume, where the general rule does not say enough.
RESUME_NOTES = {
    key: "The chunks of a run are fixed when it starts (run.json's plan): any number of ranks can resume it, "
    "but not another cut."
    for key in ("dynamic.chunk_frames", "dynamic.chunk_overlap")
}


def _refuse(option: str, key: str, old: Any, new: Any) -> UserError:
    note = f" {RESUME_NOTES[key]}" if key in RESUME_NOTES else ""
    return UserError(
        f"{option} would change {key} of the run being resumed ({old!r} -> {new!r}); a resumed run keeps its "
        f"config except {', '.join(RESUMABLE)}.{note}",
        hint="Drop the option to resume as the run was, or start a new run (another --out) with it.",
    )


def resume_config(stored: Config, request: ConfigRequest) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """A resumed run's config: ``stored`` with what ``request`` explicitly asks for, where that is safe.

    Only keys the request names count: those the ``--config`` file chain sets, the ``--set`` keys and
    the typed options. A key that would change and is not in ``RESUMABLE`` raises a ``UserError``
    naming the option. Returns the config and its changes ``{key: (old, new)}``.
    """
    asked: dict[str, tuple[Any, str]] = {}  # key -> (value, the option that asks for it)
    if request.preset is not None:
        preset_cfg, explicit, _ = _layers(request.preset)
        asked.update({k: (get_key(preset_cfg, k), f"--config {request.preset}") for k in explicit if k != "preset"})
    for pairs, source in ((list(request.overrides), "--set"), (_typed_pairs(request.typed), "command line")):
        for key, text in _flatten(parse_overrides(pairs)).items():
            typed = Config()  # coerce the text to the field's type
            _apply_dict(typed, parse_overrides([f"{key}={text}"]), source)
            option = f"--set {key}={text}" if source == "--set" else TYPED_OPTIONS.get(key, key)
            asked[key] = (get_key(typed, key), option)
    cfg = config_from_dict(stored.to_dict())
    changes: dict[str, tuple[Any, Any]] = {}
    for key, (value, option) in asked.items():
        old = get_key(stored, key)
        if value == old:
            continue
        if not is_resumable(key):
            raise _refuse(option, key, old, value)
        _apply_dict(cfg, parse_overrides([f"{key}={value}"]), option)
        changes[key] = (old, value)
    check_ranges(cfg)
    return cfg, changes


def check_resumable(stored: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` where ``cfg`` differs from a run's ``stored`` config; a ``UserError`` naming
    the first key that may not change on resume."""
    changes = _differences(stored, cfg)
    for key, (old, new) in changes.items():
        if not is_resumable(key):
            raise _refuse("the config", key, old, new)
    return changes


def config_from_dict(data: dict[str, Any], source: str = "config.json") -> Config:
    """Inverse of ``Config.to_dict`` (used to load a run's saved config); range-checked."""
    cfg = Config()
    _apply_dict(cfg, dict(data), source)
    check_ranges(cfg, source)
    return cfg


def load_run_config(path: str | Path) -> Config:
    return config_from_dict(_read_json(Path(path)), str(path))


# --------------------------------------------------------------------------------------------
# Ranges: every numeric field's valid values, checked whenever a config is resolved or loaded.

Check = tuple[Callable[[Any], bool], str]


def _at_least(low: float) -> Check:
    return (lambda v: v >= low), f">= {low}"


def _positive() -> Check:
    return (lambda v: v > 0), "> 0"


def _between(low: float, high: float, *, high_open: bool = False) -> Check:
    if high_open:
        return (lambda v: low <= v < high), f"in [{low}, {high})"
    return (lambda v: low <= v <= high), f"in [{low}, {high}]"


def _finite() -> Check:
    return (lambda v: True), "finite"


RANGES: dict[str, Check] = {
    "model.n_levels": _between(1, 128),  # tcnn's limit
    "model.n_features_per_level": ((lambda v: v in (1, 2, 4, 8)), "one of 1, 2, 4, 8"),  # what tcnn compiles
    "model.log2_hashmap_size": _between(1, 30),
    "model.base_resolution": _at_least(2),
    "model.finest_resolution": _at_least(2),
    "model.sdf_hidden": _at_least(1),
    "model.sdf_outputs": _at_least(1),
    "model.sdf_bias": _finite(),
    "model.color_hidden": _at_least(1),
    "model.color_layers": _at_least(1),
    "model.sh_degree": _between(1, 8),  # tcnn's SphericalHarmonics and the twin (MAX_SH_DEGREE)
    "model.init_variance": _finite(),
    "model.background_samples": _at_least(1),
    "model.background_hidden": _at_least(2),
    "model.background_frequencies": _between(0, 16),  # 2^15 pi: past float32's resolution of (x, u)
    "sampling.grid_resolution": _at_least(1),
    "sampling.grid_ema_decay": _between(0, 1),
    "sampling.grid_threshold": _at_least(0),
    "sampling.grid_warmup_steps": _at_least(0),
    "sampling.grid_update_every": _at_least(1),
    "sampling.step_size": _positive(),
    "sampling.early_stop_eps": _between(0, 1, high_open=True),
    "sampling.target_samples": _at_least(1),
    "sampling.initial_rays": _at_least(1),
    "sampling.max_rays": _at_least(1),
    "sampling.max_samples_factor": _at_least(1),
    "train.steps": _at_least(1),
    "train.lr": _positive(),
    "train.lr_final_factor": _positive(),
    "train.lr_decay_start": _between(0, 1),
    "train.adam_beta1": _between(0, 1, high_open=True),
    "train.adam_beta2": _between(0, 1, high_open=True),
    "train.adam_eps": _positive(),
    "train.weight_decay": _at_least(0),
    "train.ema_decay": _between(0, 1, high_open=True),
    "train.huber_delta": _positive(),
    "train.eikonal_weight": _at_least(0),
    "train.mask_weight": _at_least(0),
    "train.cos_anneal_steps": _at_least(0),
    "train.progressive_start_levels": _at_least(1),
    "train.progressive_start_step": _at_least(0),
    "train.progressive_every": _at_least(0),  # 0: every level from the start
    "train.seed": _at_least(0),
    "train.log_every": _at_least(1),
    "train.checkpoint_every": _at_least(0),  # 0: only at the end and on Ctrl-C
    "output.mesh_resolution": _at_least(16),  # as export-mesh --resolution
    "output.remove_floaters": _between(0, 1),
    "output.render_test_views": _at_least(0),
    "output.render_chunk": _at_least(1),
    "dynamic.first_frame_steps": _at_least(1),
    "dynamic.next_frame_steps": _at_least(1),
    "dynamic.global_movement_steps": _at_least(0),
    "dynamic.global_movement_lr": _positive(),
    "dynamic.joint_movement_lr_factor": _at_least(0),
    "dynamic.max_retries": _at_least(0),
    "dynamic.chunk_frames": _at_least(0),  # 0: split evenly over the ranks
    "dynamic.chunk_overlap": _at_least(0),
}


def check_ranges(cfg: Config, source: str | None = None) -> None:
    """``UserError`` naming the first field outside its range (``RANGES``; every float must be finite)."""
    for key, value in _flatten(cfg.to_dict()).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        ok, rule = RANGES[key]
        if isinstance(value, float) and not math.isfinite(value):
            rule = f"a finite number ({rule})" if rule != "finite" else "a finite number"
            ok = lambda v: False  # noqa: E731
        if not ok(value):
            raise UserError(
                f"config key '{key}' must be {rule}, got {value!r}.",
                path=source,
                hint="Fix the value (--set or the config file) and run again.",
            )
    d = cfg.dynamic
    if d.predict_global_movement and d.global_movement_steps > d.next_frame_steps:
        # The pose phase is part of each later frame's steps: longer, and the frame's field never trains.
        raise UserError(
            f"config key 'dynamic.global_movement_steps' ({d.global_movement_steps}) must be <= "
            f"dynamic.next_frame_steps ({d.next_frame_steps}): the pose phase is the start of each frame's steps.",
            path=source,
            hint="Raise next_frame_steps or lower global_movement_steps (--set or the config file).",
        )
    if cfg.model.finest_resolution < cfg.model.base_resolution:
        raise UserError(
            f"config key 'model.finest_resolution' ({cfg.model.finest_resolution}) must be >= "
            f"model.base_resolution ({cfg.model.base_resolution}).",
            path=source,
        )
