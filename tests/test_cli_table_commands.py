"""Every ``neus2`` command on bad input (train, train-dynamic, export-mesh, evaluate, doctor, and
more rows for inspect and convert-neus): one row per input, exit code 2, a message that names
the option or file, no traceback, nothing already written lost.

Rows that would train stop at validation, before the first step. A few rows need a trained run
(export-mesh, ``--resume``): they share one 2-step static run and one 2-frame dynamic run, built
once per module and only when a selected row names them (``SharedInputs``). Their folders have
brackets in their names (``runs[v2]/[/x]``), so every row that prints them checks that user text
prints as written, never as rich markup; the ``code=0`` rows check it on the success paths.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from tests.cli_table import Row, run_row
from tests.scenes import dynamic_scene, static_scene
from tests.test_data_cli_table import CONVERT, INSPECT, blender, neus, plain, under_a_file
from tests.test_data_scenes import write_neus2_scene

# A CPU-sized config: training rows that get past validation would still be quick, and the shared
# runs take about a second per step.
TINY = [
    "--config",
    "fast",
    "--no-progress",
    "--set",
    "backend=torch",
    "--set",
    "model.n_levels=4",
    "--set",
    "model.log2_hashmap_size=12",
    "--set",
    "sampling.grid_resolution=16",
    "--set",
    "output.mesh_resolution=16",
    "--set",
    "output.render_test_views=0",
    "--set",
    "train.steps=2",  # a row that wrongly passes validation fails fast, on its exit code
]
DYNAMIC_TINY = [
    *TINY,
    "--set",
    "first_frame_steps=2",
    "--set",
    "next_frame_steps=2",
    "--set",
    "global_movement_steps=1",
]


# --------------------------------------------------------------------------------------------
# Shared inputs, built lazily once per module.


def _train_static(root: Path, scene: Path) -> Path:
    from tests.cli_table import run_cli

    run = root / "runs[v2]" / "[/x]static"
    result = run_cli(["train", str(scene), "--out", str(run), "--steps", "2", *TINY])
    assert result.code == 0, result.err
    return run


def _train_dynamic(root: Path, sequence: Path) -> Path:
    from tests.cli_table import run_cli

    run = root / "runs[v2]" / "[/x]dynamic"
    result = run_cli(["train-dynamic", str(sequence), "--out", str(run), *DYNAMIC_TINY])
    assert result.code == 0, result.err
    return run


class SharedInputs(Mapping):
    """Placeholder values that several rows use as they are; each is built on first use.

    ``scene``: a 4-view static scene (16x16 px, 2 test views); ``run``: a finished 2-step static run on
    it; ``sequence``: a 2-frame dynamic sequence; ``dynamic_run``: a finished run on it; ``mesh`` and
    ``gt``: two small spheres (PLY) for ``evaluate``.
    """

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}
        self._builders: dict[str, Callable[[], Path]] = {
            "scene": lambda: static_scene(root / "scene[v2]", views=4, size=16),
            "run": lambda: _train_static(root, self.path("scene")),
            "sequence": lambda: dynamic_scene(root / "sequence[v2]", frames=2, views=4, size=16),
            "dynamic_run": lambda: _train_dynamic(root, self.path("sequence")),
            "mesh": lambda: _sphere(root / "meshes" / "pred[v2].ply", 1.0),
            "gt": lambda: _sphere(root / "meshes" / "gt.ply", 1.02),
        }

    def path(self, key: str) -> Path:
        if key not in self._built:
            self._built[key] = self._builders[key]()
        return self._built[key]

    def __getitem__(self, key: str) -> str:
        if key not in self._builders:
            raise KeyError(key)
        return str(self.path(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def _sphere(path: Path, radius: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.icosphere(subdivisions=2, radius=radius).export(path)
    return path


SHARED: SharedInputs | None = None  # set by the ``shared`` fixture; setups that copy an input use it


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Iterator[SharedInputs]:
    global SHARED
    SHARED = SharedInputs(tmp_path_factory.mktemp("shared"))
    yield SHARED
    SHARED = None


# --------------------------------------------------------------------------------------------
# Builders: each returns the placeholder values of its row.


def copy_of(key: str, edit: Callable[[Path], None] | None = None, name: str = "copy", as_: str = "copy"):
    """{copy} (or {as_}): a copy of a shared input (scene, run) under the row's folder, changed by ``edit``."""

    def setup(root: Path) -> dict[str, str]:
        source = SHARED.path(key)
        copy = root / name
        shutil.copytree(source, copy)
        if edit is not None:
            edit(copy)
        return {as_: str(copy)}

    return setup


def touch_cameras(folder: Path) -> None:
    """Change the camera files' bytes (not their meaning): the scene's digest is another one."""
    for path in sorted(folder.glob("*.json")):
        path.write_text(path.read_text() + "\n")


def files(**contents: bytes | str | None | tuple[str, bytes | str | None]):
    """{key}: a file under the row's folder for each keyword, named ``key`` or, given a tuple
    ``(name, content)``, ``name``. Content ``None``: a folder; a str: text."""

    def setup(root: Path) -> dict[str, str]:
        values = {}
        for key, content in contents.items():
            name, content = content if isinstance(content, tuple) else (key, content)
            path = root / name
            if content is None:
                path.mkdir(parents=True)
            elif isinstance(content, str):
                path.write_text(content)
            else:
                path.write_bytes(content)
            values[key] = str(path)
        return values

    return setup


def torch_file(obj) -> Callable[[Path], dict[str, str]]:
    """{ckpt}: a torch file holding ``obj``, named checkpoint.pt."""

    def setup(root: Path) -> dict[str, str]:
        path = root / "checkpoint.pt"
        torch.save(obj, path)
        return {"ckpt": str(path)}

    return setup


def sphere_mesh(name: str, radius: float = 1.0):
    def setup(root: Path) -> dict[str, str]:
        return {name.split(".")[0]: str(_sphere(root / name, radius))}

    return setup


def blocker(name: str = "blocker"):
    """{blocker}: a plain file, so that ``{blocker}/x`` cannot be created."""

    def setup(root: Path) -> dict[str, str]:
        (root / name).write_bytes(b"precious")
        return {"blocker": str(root / name)}

    return setup


def kept_folder(contents: dict[str, bytes]):
    """{out}: a folder holding ``contents``."""

    def setup(root: Path) -> dict[str, str]:
        out = root / "out"
        for rel, data in contents.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        return {"out": str(out)}

    return setup


def unchanged(key: str, contents: dict[str, bytes]):
    """Check: {key} holds exactly ``contents``."""

    def check(values) -> None:
        folder = Path(values[key])
        found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        assert found == contents

    return check


def blocker_kept(values) -> None:
    assert Path(values["blocker"]).read_bytes() == b"precious"


def both(*setups):
    def setup(root: Path) -> dict[str, str]:
        values: dict[str, str] = {}
        for s in setups:
            values.update(s(root))
        return values

    return setup


def edit_json(rel: str, fn: Callable[[dict], object]):
    def edit(folder: Path) -> None:
        path = folder / rel
        data = json.loads(path.read_text())
        result = fn(data)
        path.write_text(result if isinstance(result, str) else json.dumps(data))

    return edit


def write(rel: str, content: bytes):
    def edit(folder: Path) -> None:
        (folder / rel).write_bytes(content)

    return edit


def remove(rel: str):
    def edit(folder: Path) -> None:
        path = folder / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return edit


def only_files(key: str, names: set[str]):
    """Check: the folder {key} holds exactly the files ``names`` (relative paths)."""

    def check(values) -> None:
        folder = Path(values[key])
        assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == names

    return check


def mesh_written(*rel: str):
    """Check: ``{root}/<rel>`` is a non-empty mesh and nothing else was written beside it."""

    def check(values) -> None:
        path = Path(values["root"], *rel)
        assert len(trimesh.load(path).faces) > 0
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    return check


# --------------------------------------------------------------------------------------------
# train

SCENE = "{scene}"

TRAIN = [
    # The scene.
    Row("scene-missing", ("train", "{root}/nope", *TINY), ("scene not found", "nope")),
    Row("scene-text-file", ("train", "{scene}", *TINY), ("not a scene file",), plain("notes.txt", b"hello")),
    Row("scene-empty-folder", ("train", "{scene}", *TINY), ("no scene found",), plain("empty", folder=True)),
    Row(
        "scene-bad-json",
        ("train", "{scene}", *TINY),
        ("invalid json at line",),
        blender(lambda m: '{"frames": [,]}'),
    ),
    Row(
        "scene-dynamic-folder",
        ("train", "{copy}", *TINY),
        ("train-dynamic",),
        copy_of("sequence"),
    ),
    Row(
        "scene-masks-empty",
        ("train", "{scene}", *TINY),
        ("every mask is empty",),
        neus(lambda s: [(p.write_bytes(_black_png(40, 30))) for p in sorted((s / "mask").iterdir())]),
    ),
    # --config and --set.
    Row("config-unknown-preset", ("train", SCENE, "--config", "nope", "--no-progress"), ("nope", "preset")),
    Row(
        "config-file-missing",
        ("train", SCENE, "--config", "{root}/mine.json", "--no-progress"),
        ("mine.json", "not found"),
    ),
    Row(
        "config-file-bad-json",
        ("train", SCENE, "--config", "{conf}", "--no-progress"),
        ("conf", "json"),
        files(conf="{not json"),
    ),
    Row(
        "config-file-list",
        ("train", SCENE, "--config", "{conf}", "--no-progress"),
        ("conf", "object"),
        files(conf="[1, 2]"),
    ),
    Row(
        "config-file-unknown-key",
        ("train", SCENE, "--config", "{conf}", "--no-progress"),
        ("trian",),
        files(conf='{"trian": {"steps": 3}}'),
    ),
    Row(
        "config-file-unknown-preset",
        ("train", SCENE, "--config", "{conf}", "--no-progress"),
        ("nope",),
        files(conf='{"preset": "nope"}'),
    ),
    Row("set-no-equals", ("train", SCENE, *TINY, "--set", "train.steps"), ("train.steps", "key=value")),
    Row("set-unknown-key", ("train", SCENE, *TINY, "--set", "train.stepz=3"), ("train.stepz",)),
    Row(
        "set-unknown-section",
        ("train", SCENE, *TINY, "--set", "trian.steps=3"),
        ("unknown config section or key 'trian'",),
    ),
    Row("set-not-a-number", ("train", SCENE, *TINY, "--set", "train.steps=many"), ("train.steps", "many")),
    Row("set-lr-nan", ("train", SCENE, *TINY, "--set", "train.lr=nan"), ("train.lr",)),
    Row("set-lr-negative", ("train", SCENE, *TINY, "--set", "train.lr=-1"), ("train.lr",)),
    Row("set-n-levels-zero", ("train", SCENE, *TINY, "--set", "model.n_levels=0"), ("model.n_levels",)),
    Row("set-grid-zero", ("train", SCENE, *TINY, "--set", "sampling.grid_resolution=0"), ("sampling.grid_resolution",)),
    Row("set-step-size-zero", ("train", SCENE, *TINY, "--set", "sampling.step_size=0"), ("sampling.step_size",)),
    Row(
        "set-mesh-resolution-zero",
        ("train", SCENE, *TINY, "--set", "output.mesh_resolution=0"),
        ("output.mesh_resolution",),
    ),
    Row("set-floaters-two", ("train", SCENE, *TINY, "--set", "output.remove_floaters=2"), ("output.remove_floaters",)),
    Row("set-backend-bogus", ("train", SCENE, *TINY, "--set", "backend=cuda"), ("backend", "cuda")),
    Row("steps-zero", ("train", SCENE, *TINY, "--steps", "0"), ("train.steps",)),
    Row("steps-negative", ("train", SCENE, *TINY, "--steps", "-5"), ("train.steps",)),
    Row("steps-text", ("train", SCENE, *TINY, "--steps", "many"), ("--steps", "valid integer")),
    Row("backend-bogus", ("train", SCENE, "--backend", "cuda"), ("--backend", "cuda")),
    Row(
        "backend-tcnn-on-cpu",
        ("train", SCENE, *TINY, "--backend", "tcnn"),
        ("tcnn backend cannot be used", "--backend torch"),
    ),
    Row("unknown-option", ("train", SCENE, "--stepz", "3"), ("no such option", "--stepz")),
    # --out and --resume.
    Row(
        "out-not-empty",
        ("train", SCENE, *TINY, "--out", "{out}"),
        ("already holds files", "--force"),
        kept_folder({"keep.txt": b"mine"}),
        check=unchanged("out", {"keep.txt": b"mine"}),
    ),
    Row(
        "out-is-file",
        ("train", SCENE, *TINY, "--out", "{blocker}"),
        ("--out", "is a file, not a folder"),
        blocker(),
        check=blocker_kept,
    ),
    Row(
        "out-under-file",
        ("train", SCENE, *TINY, "--out", "{blocker}/run"),
        ("--out", "blocker is a file"),
        blocker(),
        check=blocker_kept,
    ),
    Row("resume-without-out", ("train", SCENE, *TINY, "--resume"), ("--resume needs --out",)),
    Row(
        "resume-not-a-run",
        ("train", SCENE, *TINY, "--out", "{out}", "--resume"),
        ("no config.json",),
        kept_folder({"keep.txt": b"mine"}),
        check=unchanged("out", {"keep.txt": b"mine"}),
    ),
    Row(
        "resume-other-scene",
        ("train", "{other}", "--out", "{copy}", "--resume", "--no-progress"),
        ("another scene",),
        both(copy_of("run"), copy_of("scene", touch_cameras, name="other", as_="other")),
    ),
    Row(
        "resume-changed-lr",
        ("train", SCENE, "--out", "{copy}", "--resume", "--set", "train.lr=0.5", "--no-progress"),
        ("train.lr",),
        copy_of("run"),
    ),
    Row(
        "resume-other-preset",
        ("train", SCENE, "--out", "{copy}", "--resume", "--config", "dtu", "--no-progress"),
        ("--config",),
        copy_of("run"),
    ),
    Row(
        "resume-config-damaged",
        ("train", SCENE, "--out", "{copy}", "--resume", "--no-progress"),
        ("config.json", "not valid json"),
        copy_of("run", write("config.json", b"{")),
    ),
    Row(
        "resume-checkpoint-damaged",
        ("train", SCENE, "--out", "{copy}", "--resume", "--no-progress"),
        ("checkpoint.pt", "cannot read"),
        copy_of("run", write("checkpoint.pt", b"garbage")),
    ),
    Row(
        "resume-run-json-damaged",
        ("train", SCENE, "--out", "{copy}", "--resume", "--no-progress"),
        ("run.json",),
        copy_of("run", write("run.json", b"[")),
    ),
    # User text prints as written: a complete run in a bracketed folder resumes to a no-op.
    Row(
        "markup-resume-complete",
        ("train", SCENE, "--out", "{copy}", "--resume", "--no-progress"),
        ("already complete", "runs[v2]/[/x]static[bold]", "done"),
        copy_of("run", name="runs[v2]/[/x]static[bold]"),
        code=0,
    ),
]


def _black_png(width: int, height: int) -> bytes:
    import io

    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(buffer, np.zeros((height, width), dtype=np.uint8), extension=".png")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# train-dynamic


def sequence(fn: Callable[[Path], None] | None = None):
    """{seq}: a two-frame NeuS2 sequence (no training data beyond the JSONs' images)."""

    def setup(root: Path) -> dict[str, str]:
        seq = write_neus2_scene(root / "seq", name="0000.json", test_name=None)
        (seq / "0001.json").write_text((seq / "0000.json").read_text())
        if fn is not None:
            fn(seq)
        return {"seq": str(seq)}

    return setup


SEQ = "{sequence}"

DYNAMIC = [
    Row("missing", ("train-dynamic", "{root}/nope", *DYNAMIC_TINY), ("nope", "not found")),
    Row("empty-folder", ("train-dynamic", "{seq}", *DYNAMIC_TINY), ("no json frames",), files(seq=None)),
    Row("a-file", ("train-dynamic", "{seq}", *DYNAMIC_TINY), ("seq", "folder"), files(seq="{}")),
    Row(
        "frame-is-folder",
        ("train-dynamic", "{seq}", *DYNAMIC_TINY),
        ("0002.json", "is a folder, not a json file"),
        sequence(lambda s: (s / "0002.json").mkdir()),
    ),
    Row(
        "frame-bad-json",
        ("train-dynamic", "{seq}", *DYNAMIC_TINY),
        ("0001.json", "invalid json"),
        sequence(lambda s: (s / "0001.json").write_text("{")),
    ),
    Row("frames-text", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "a:b"), ("--frames", "integers")),
    Row("frames-one-number", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "3"), ("--frames", "a:b")),
    Row("frames-four-parts", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "0:1:1:1"), ("--frames", "a:b")),
    Row("frames-step-zero", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "0:2:0"), ("step must be positive",)),
    Row("frames-step-negative", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "::-1"), ("step must be positive",)),
    Row("frames-empty", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--frames", "5:9"), ("selects no frame", "2")),
    Row("mode-bogus", ("train-dynamic", SEQ, "--mode", "batch"), ("--mode", "batch")),
    Row(
        "next-frame-steps-zero",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--set", "dynamic.next_frame_steps=0"),
        ("dynamic.next_frame_steps",),
    ),
    Row(
        "first-frame-steps-negative",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--set", "dynamic.first_frame_steps=-1"),
        ("dynamic.first_frame_steps",),
    ),
    Row(
        "movement-lr-nan",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--set", "dynamic.global_movement_lr=nan"),
        ("dynamic.global_movement_lr",),
    ),
    Row(
        "pose-phase-too-long",
        ("train-dynamic", SEQ, *TINY, "--set", "next_frame_steps=5", "--set", "global_movement_steps=9"),
        ("global_movement_steps", "next_frame_steps"),
    ),
    Row("set-unknown-key", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--set", "dynamic.framez=3"), ("dynamic.framez",)),
    Row("config-missing", ("train-dynamic", SEQ, "--config", "{root}/c.json"), ("c.json", "not found")),
    Row(
        "backend-tcnn-on-cpu",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--backend", "tcnn"),
        ("tcnn backend cannot be used", "--backend torch"),
    ),
    Row("steps-option-absent", ("train-dynamic", SEQ, "--steps", "3"), ("no such option", "--steps")),
    Row(
        "out-not-empty",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--out", "{out}"),
        ("already holds files", "--force"),
        kept_folder({"keep.txt": b"mine"}),
        check=unchanged("out", {"keep.txt": b"mine"}),
    ),
    Row(
        "out-under-file",
        ("train-dynamic", SEQ, *DYNAMIC_TINY, "--out", "{blocker}/run"),
        ("--out", "blocker is a file"),
        blocker(),
        check=blocker_kept,
    ),
    Row("resume-without-out", ("train-dynamic", SEQ, *DYNAMIC_TINY, "--resume"), ("--resume needs --out",)),
    Row(
        "resume-other-mode",
        ("train-dynamic", SEQ, "--out", "{copy}", "--resume", "--mode", "per-frame", "--no-progress"),
        ("--mode",),
        copy_of("dynamic_run"),
    ),
    Row(
        "resume-other-frames",
        ("train-dynamic", SEQ, "--out", "{copy}", "--resume", "--frames", "0:1", "--no-progress"),
        ("--frames",),
        copy_of("dynamic_run"),
    ),
    Row(
        "resume-other-sequence",
        ("train-dynamic", "{other}", "--out", "{copy}", "--resume", "--no-progress"),
        ("another scene", "other"),
        both(copy_of("dynamic_run"), copy_of("sequence", touch_cameras, name="other", as_="other")),
    ),
    Row(
        "resume-changed-steps",
        ("train-dynamic", SEQ, "--out", "{copy}", "--resume", "--set", "dynamic.next_frame_steps=9", "--no-progress"),
        ("dynamic.next_frame_steps",),
        copy_of("dynamic_run"),
    ),
    Row(
        "resume-run-json-damaged",
        ("train-dynamic", SEQ, "--out", "{copy}", "--resume", "--no-progress"),
        ("run.json",),
        copy_of("dynamic_run", write("run.json", b"{")),
    ),
    Row(
        "markup-resume-complete",
        ("train-dynamic", SEQ, "--out", "{copy}", "--resume", "--no-progress"),
        ("already complete", "[/x]seq[bold]", "done"),
        copy_of("dynamic_run", name="[/x]seq[bold]"),
        code=0,
    ),
]


# --------------------------------------------------------------------------------------------
# export-mesh

RUN = "{run}"
EXPORT_TINY = ("--resolution", "16", "--backend", "torch")

EXPORT = [
    # The checkpoint.
    Row("missing", ("export-mesh", "{root}/nope.pt"), ("checkpoint not found", "nope.pt")),
    Row("folder-without-checkpoint", ("export-mesh", "{d}"), ("no checkpoint.*",), files(d=None)),
    Row("garbage", ("export-mesh", "{ckpt}"), ("cannot read this checkpoint",), files(ckpt=b"not torch")),
    Row("foreign-torch-file", ("export-mesh", "{ckpt}"), ("not a neus2 checkpoint",), torch_file({"weights": 1})),
    Row("torch-file-list", ("export-mesh", "{ckpt}"), ("not a neus2 checkpoint",), torch_file([1, 2])),
    Row(
        "backend-tcnn-on-cpu",
        ("export-mesh", RUN, "--resolution", "16", "--backend", "tcnn"),
        ("tcnn backend cannot be used", "--backend torch"),
    ),
    # The options.
    Row("resolution-small", ("export-mesh", RUN, "--resolution", "8"), ("--resolution", "greater than or equal to 16")),
    Row("resolution-text", ("export-mesh", RUN, "--resolution", "fine"), ("--resolution", "valid integer")),
    Row("format-stl", ("export-mesh", RUN, "--format", "stl"), ("--format", "stl")),
    Row("bbox-five", ("export-mesh", RUN, "--bbox", "0,0,0,1,1"), ("--bbox", "six", "has 5")),
    Row("bbox-seven", ("export-mesh", RUN, "--bbox", "0,0,0,1,1,1,1"), ("--bbox", "has 7")),
    Row("bbox-text", ("export-mesh", RUN, "--bbox", "a,b,c,d,e,f"), ("--bbox", "not a list of numbers")),
    Row("bbox-empty", ("export-mesh", RUN, "--bbox", ""), ("--bbox", "not a list of numbers")),
    Row("bbox-nan", ("export-mesh", RUN, "--bbox", "nan,0,0,1,1,1"), ("--bbox", "nan or infinite", "finite")),
    Row("bbox-inf", ("export-mesh", RUN, "--bbox", "-inf,0,0,inf,1,1"), ("--bbox", "nan or infinite")),
    Row("bbox-min-above-max", ("export-mesh", RUN, "--bbox", "0,2,0,1,1,1"), ("--bbox", "ymin 2 >= ymax 1")),
    Row("bbox-flat", ("export-mesh", RUN, "--bbox", "0,0,0,0,1,1"), ("--bbox", "xmin 0 >= xmax 0")),
    Row(
        "bbox-misses-object",
        ("export-mesh", RUN, *EXPORT_TINY, "--bbox", "50,50,50,51,51,51", "--out", "{root}/m.ply"),
        ("no zero crossing", "--bbox"),
        check=only_files("root", set()),
    ),
    Row("floaters-two", ("export-mesh", RUN, "--remove-floaters", "2"), ("--remove-floaters", "0 (keep all) to 1")),
    Row("floaters-negative", ("export-mesh", RUN, "--remove-floaters=-0.5"), ("--remove-floaters",)),
    Row("floaters-nan", ("export-mesh", RUN, "--remove-floaters", "nan"), ("--remove-floaters", "nan")),
    # --out: checked before any work, an existing folder receives the file.
    Row("out-stl", ("export-mesh", RUN, "--out", "{root}/m.stl"), ("--out", ".ply or .obj", "m.stl")),
    Row("out-json", ("export-mesh", RUN, "--out", "{run}/config.json"), ("--out", ".ply or .obj")),
    Row(
        "out-under-file",
        ("export-mesh", RUN, "--out", "{blocker}/m.ply"),
        ("--out", "blocker is a file"),
        blocker(),
        check=blocker_kept,
    ),
    Row(
        "out-file-name-is-folder",
        ("export-mesh", RUN, "--out", "{root}/m"),
        ("m.ply", "is a folder, not a mesh file"),
        files(m=("m.ply", None)),
    ),
    Row(
        "out-mesh-name-in-folder-is-folder",
        ("export-mesh", RUN, "--resolution", "16", "--out", "{d}"),
        ("mesh_16.ply", "is a folder, not a mesh file"),
        lambda root: (root / "d" / "mesh_16.ply").mkdir(parents=True) or {"d": str(root / "d")},
    ),
    Row(
        "out-existing-folder",
        ("export-mesh", RUN, *EXPORT_TINY, "--out", "{d}"),
        ("wrote", "mesh_16.ply"),
        files(d=None),
        code=0,
        check=mesh_written("d", "mesh_16.ply"),
    ),
    Row(
        "out-new-folder-with-slash",
        ("export-mesh", RUN, *EXPORT_TINY, "--format", "obj", "--out", "{root}/new/"),
        ("wrote", "new/mesh_16.obj"),
        code=0,
        check=mesh_written("new", "mesh_16.obj"),
    ),
    Row(
        "out-no-suffix",
        ("export-mesh", RUN, *EXPORT_TINY, "--out", "{root}/plain"),
        ("wrote", "plain.ply"),
        code=0,
        check=mesh_written("plain.ply"),
    ),
    Row(
        "markup-out",
        ("export-mesh", RUN, *EXPORT_TINY, "--out", "{root}/m[v2][/x].ply"),
        ("wrote", "m[v2][/x].ply"),
        code=0,
        check=mesh_written("m[v2][/x].ply"),
    ),
    # Dynamic runs.
    Row("dynamic-without-frame", ("export-mesh", "{dynamic_run}"), ("dynamic run", "--frame")),
    Row("dynamic-frame-absent", ("export-mesh", "{dynamic_run}", "--frame", "7"), ("frame 7 is not part",)),
    Row("dynamic-frame-negative", ("export-mesh", "{dynamic_run}", "--frame=-1"), ("frame -1 is not part",)),
    Row("static-with-frame", ("export-mesh", RUN, "--frame", "0"), ("not a dynamic run",)),
    Row(
        "dynamic-frame-not-trained",
        ("export-mesh", "{copy}", "--frame", "1", *EXPORT_TINY),
        ("frame 1 has not been trained",),
        copy_of("dynamic_run", remove("frames/0001/field.bin")),
    ),
    Row(
        "dynamic-field-damaged",
        ("export-mesh", "{copy}", "--frame", "1", *EXPORT_TINY),
        ("0001", "field.bin", "cannot be read"),
        copy_of("dynamic_run", write("frames/0001/field.bin", b"garbage")),
    ),
    Row(
        "dynamic-transform-damaged",
        ("export-mesh", "{copy}", "--frame", "1", *EXPORT_TINY),
        ("0001", "transform.json", "cannot be read as json", "--resume"),
        copy_of("dynamic_run", write("frames/0001/transform.json", b"{")),
    ),
    Row(
        "dynamic-transform-not-a-matrix",
        ("export-mesh", "{copy}", "--frame", "0", *EXPORT_TINY),
        ("0000", "world_to_canonical"),
        copy_of("dynamic_run", edit_json("frames/0000/transform.json", lambda t: t.update(world_to_canonical=[1]))),
    ),
    Row(
        "dynamic-run-json-damaged",
        ("export-mesh", "{copy}", "--frame", "1", *EXPORT_TINY),
        ("run.json",),
        copy_of("dynamic_run", write("run.json", b"{")),
    ),
    Row(
        "dynamic-config-damaged",
        ("export-mesh", "{copy}", "--frame", "0", *EXPORT_TINY),
        ("config.json",),
        copy_of("dynamic_run", write("config.json", b"[]")),
    ),
    Row(
        "dynamic-into-folder",
        ("export-mesh", "{dynamic_run}", "--frame", "1", *EXPORT_TINY, "--out", "{d}"),
        ("wrote", "frame_0001_mesh_16.ply"),
        files(d=None),
        code=0,
        check=mesh_written("d", "frame_0001_mesh_16.ply"),
    ),
]


# --------------------------------------------------------------------------------------------
# evaluate

MESH, GT = "{mesh}", "{gt}"
FAST = ("--n-points", "500")

EVALUATE = [
    Row("target-missing", ("evaluate", "{root}/nope.ply", "--gt", GT), ("nope.ply", "does not exist")),
    Row("no-gt", ("evaluate", MESH), ("needs a ground truth", "--gt")),
    Row("gt-missing", ("evaluate", MESH, "--gt", "{root}/gt.ply", *FAST), ("gt.ply", "does not exist")),
    Row("gt-folder", ("evaluate", MESH, "--gt", "{d}", *FAST), ("the ground truth is a folder",), files(d=None)),
    Row(
        "target-garbage",
        ("evaluate", "{bad}", "--gt", GT, *FAST),
        ("bad.ply", "could not read the prediction"),
        files(bad=("bad.ply", b"junk")),
    ),
    Row(
        "target-text-suffix",
        ("evaluate", "{t}", "--gt", GT, *FAST),
        ("t.txt", "same position"),
        files(t=("t.txt", "1 2 3")),
    ),
    Row(
        "target-checkpoint",
        ("evaluate", "{run}/checkpoint.pt", "--gt", GT, *FAST),
        ("checkpoint.pt", "training checkpoint, not a mesh", "export-mesh"),
    ),
    Row("checkpoint-no-gt", ("evaluate", "{run}/checkpoint.pt"), ("training checkpoint", "[/x]static")),
    Row("run-folder-missing", ("evaluate", "{root}/runs/gone"), ("gone", "does not exist")),
    Row(
        "target-npy-garbage",
        ("evaluate", "{bad}", "--gt", GT, *FAST),
        ("bad.npy", "not a numpy .npy array"),
        files(bad=("bad.npy", b"junk")),
    ),
    Row("density-zero", ("evaluate", MESH, "--gt", GT, "--density", "0"), ("--density", "positive")),
    Row("n-points-zero", ("evaluate", MESH, "--gt", GT, "--n-points", "0"), ("--n-points", "at least 1")),
    Row("points-and-density", ("evaluate", MESH, "--gt", GT, "--n-points", "9", "--density", "1"), ("not both",)),
    Row("threshold-zero", ("evaluate", MESH, "--gt", GT, "-t", "0"), ("--threshold", "positive")),
    Row("threshold-nan", ("evaluate", MESH, "--gt", GT, "-t", "nan"), ("--threshold", "positive")),
    Row("threshold-text", ("evaluate", MESH, "--gt", GT, "-t", "tight"), ("--threshold", "valid number")),
    Row("clip-negative", ("evaluate", MESH, "--gt", GT, "--clip=-1"), ("--clip", "positive")),
    Row("max-dist-zero", ("evaluate", MESH, "--gt", GT, "--max-dist", "0"), ("--max-dist", "positive")),
    Row("downsample-negative", ("evaluate", MESH, "--gt", GT, "--downsample=-0.1"), ("--downsample", ">= 0")),
    Row("downsample-method", ("evaluate", MESH, "--gt", GT, "--downsample-method", "grid"), ("'voxel' or 'radius'",)),
    Row("crop-min-above-max", ("evaluate", MESH, "--gt", GT, "--crop", "0", "0", "0", "-1", "1", "1"), ("min < max",)),
    Row("crop-nan", ("evaluate", MESH, "--gt", GT, "--crop", "nan", "0", "0", "1", "1", "1"), ("--crop", "finite")),
    Row("crop-five", ("evaluate", MESH, "--gt", GT, "--crop", "0", "0", "0", "1", "1"), ("--crop", "6 arguments")),
    Row("plot-txt", ("evaluate", MESH, "--gt", GT, "--plot", "{root}/e.txt"), ("--plot", ".ply")),
    Row(
        "plot-under-file",
        ("evaluate", MESH, "--gt", GT, *FAST, "--plot", "{blocker}/e.ply"),
        ("--plot", "blocker is a file"),
        blocker(),
        check=blocker_kept,
    ),
    Row("scale-mat-missing", ("evaluate", MESH, "--gt", GT, *FAST, "--scale-mat", "{root}/c.npz"), ("c.npz",)),
    Row(
        "scale-mat-garbage",
        ("evaluate", MESH, "--gt", GT, *FAST, "--scale-mat", "{npz}"),
        ("c.npz", "not a numpy .npz archive"),
        files(npz=("c.npz", b"junk")),
    ),
    Row(
        "scale-mat-index-absent",
        ("evaluate", MESH, "--gt", GT, *FAST, "--scale-mat", "{npz}", "--scale-mat-index", "9"),
        ("scale_mat_9",),
        lambda root: np.savez(root / "c.npz", scale_mat_0=np.eye(4)) or {"npz": str(root / "c.npz")},
    ),
    Row("dtu-without-scan", ("evaluate", MESH, "--dtu-official", "{d}"), ("--scan",), files(d=None)),
    Row(
        "dtu-with-gt",
        ("evaluate", MESH, "--dtu-official", "{d}", "--scan", "24", "--gt", GT),
        ("do not apply with --dtu-official",),
        files(d=None),
    ),
    Row(
        "dtu-folder-missing",
        ("evaluate", MESH, "--dtu-official", "{root}/dtu", "--scan", "24"),
        ("dtu-official folder does not exist",),
    ),
    Row("dtu-folder-empty", ("evaluate", MESH, "--dtu-official", "{d}", "--scan", "24"), ("obsmask",), files(d=None)),
    Row(
        "units-mismatch",
        ("evaluate", "{big}", "--gt", GT, *FAST),
        ("differ in size", "--scale-mat"),
        sphere_mesh("big.ply", 1000.0),
    ),
    # A run folder: image metrics.
    Row("run-with-gt", ("evaluate", RUN, "--gt", GT), ("is a folder", "--gt")),
    Row("folder-without-checkpoint", ("evaluate", "{d}"), ("without a checkpoint",), files(d=None)),
    Row(
        "run-scene-moved",
        ("evaluate", "{copy}"),
        ("scene is no longer at", "moved-away", "put the scene back"),
        copy_of("run", lambda run: _move_scene_of(run)),
    ),
    # User text prints as written.
    Row(
        "markup-units",
        ("evaluate", MESH, "--gt", GT, *FAST, "--units", "[/x]mm[v2]"),
        ("chamfer-l1 ([/x]mm[v2])",),
        code=0,
    ),
]


def _move_scene_of(run: Path) -> None:
    """Point the run's checkpoint at a scene path that no longer exists."""
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    ckpt["scene"]["path"] = str(run.parent / "moved-away")
    torch.save(ckpt, run / "checkpoint.pt")


# --------------------------------------------------------------------------------------------
# doctor, the top level, and more inspect / convert-neus rows

OTHER = [
    Row("doctor-unknown-option", ("doctor", "--verbose"), ("no such option", "--verbose")),
    Row("doctor-extra-argument", ("doctor", "now"), ("unexpected extra argument", "now")),
    Row("doctor-json", ("doctor", "--json"), ('"auto_backend"',), code=0),
    Row("no-such-command", ("trian",), ("no such command", "trian")),
    Row("inspect-no-argument", ("inspect",), ("missing argument", "scene")),
    Row("inspect-json-missing", ("inspect", "{root}/nope", "--json"), ("scene not found",)),
    Row("inspect-max-views-text", ("inspect", "{root}", "--max-views", "all"), ("--max-views", "valid integer")),
    Row(
        "inspect-colmap-garbage",
        ("inspect", "{root}"),
        ("cameras.bin", "truncated"),
        lambda root: _colmap_garbage(root),
    ),
    Row(
        "inspect-plot-under-file",
        ("inspect", SCENE, "--plot", "{blocker}/c.png"),
        ("--plot", "blocker is a file"),
        blocker(),
        check=blocker_kept,
    ),
    Row("convert-no-dst", ("convert-neus", "{scene}"), ("missing argument", "dst"), neus()),
    Row("convert-src-file", ("convert-neus", "{f}", "{root}/out"), ("not a scene file",), files(f=b"x")),
    Row(
        "convert-dst-under-file",
        ("convert-neus", "{scene}", "{plot}"),
        ("dst", "blocker is a file"),
        under_a_file("out"),
    ),
    Row(
        "convert-test-views-comma",
        ("convert-neus", "{scene}", "{dst}", "--test-views", ","),
        ("--test-views", "names no view", "--no-split"),
        neus(),
    ),
]


def _colmap_garbage(root: Path) -> dict[str, str]:
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (sparse / name).write_bytes(b"\x07garbage")
    (root / "images").mkdir()
    return {}


TABLE = [(f"train-{r.id}", r) for r in TRAIN]
TABLE += [(f"train-dynamic-{r.id}", r) for r in DYNAMIC]
TABLE += [(f"export-mesh-{r.id}", r) for r in EXPORT]
TABLE += [(f"evaluate-{r.id}", r) for r in EVALUATE]
TABLE += [(r.id, r) for r in OTHER]


# With CUDA (and perhaps tinycudann) --backend tcnn may be valid input: those rows are for CPU machines.
if torch.cuda.is_available():
    TABLE = [(i, r) for i, r in TABLE if not i.endswith("backend-tcnn-on-cpu")]


@pytest.mark.parametrize("row", [r for _, r in TABLE], ids=[i for i, _ in TABLE])
def test_bad_input(row, tmp_path, shared, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run without --out goes to ./outputs: the row's folder, not the repository
    run_row(row, tmp_path, shared)


def test_table_covers_every_command_with_150_rows():
    from tests.test_cli_help import COMMANDS
    from tests.test_prepare import ROWS as PREPARE  # prepare's rows build photo folders of their own

    rows = [r for _, r in TABLE] + INSPECT + CONVERT + PREPARE
    ids = [i for i, _ in TABLE]
    assert len(set(ids)) == len(ids)
    assert len(rows) >= 150
    assert {r.argv[0] for r in rows if r.code == 2} >= set(COMMANDS)
