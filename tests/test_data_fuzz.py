"""Property tests: random damage to a valid small scene gives a ``UserError`` or a good load, never a crash.

Each example copies a tiny valid scene (4 views, 16x16 or 40x30 pixels), damages it with
1-3 random mutations (a deleted or retyped JSON key, NaN / huge / negative / zero numbers,
a wrong-shaped or non-numeric npz array, a truncated file, an image swapped for a folder,
garbage bytes or another image), then runs what ``neus2 inspect --check`` and training
run on it: ``load_scene``, ``validate_scene`` (decodes every image) and ``describe_scene``.
Anything but success or a ``UserError`` fails the test.

Deterministic: ``derandomize=True`` (examples derive from the test's source, not a random
seed) and no example database; bounded ``max_examples`` keeps each test to seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neus2cli.data.inspect import describe_scene
from neus2cli.data.loader import load_scene
from neus2cli.data.validate import validate_scene
from neus2cli.errors import UserError
from tests.test_data_scenes import write_blender_scene, write_neus2_scene, write_neus_folder

FUZZ = settings(
    derandomize=True,
    database=None,
    # A longer local search: NEUS2_FUZZ_EXAMPLES=3000 pytest tests/test_data_fuzz.py
    max_examples=int(os.environ.get("NEUS2_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Values that replace a JSON value or a matrix entry: wrong types, non-finite, huge, negative, zero.
BAD_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**70, -(2**70), 10**400]),
    st.sampled_from([0.0, -1.0, 1e-300, 1e300, -1e300, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.text(max_size=4),
)
BAD_VALUES = st.one_of(
    BAD_SCALARS,
    st.lists(BAD_SCALARS, max_size=4),
    st.lists(st.lists(st.floats(-10, 10), min_size=1, max_size=5), min_size=1, max_size=5),
    st.just({}),
    st.just({"frames": []}),
)


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Valid tiny scenes of each format, built once and copied per example."""
    root = tmp_path_factory.mktemp("fuzz_templates")
    return {
        "blender": write_blender_scene(root / "blender", n=4, size=16),
        "neus2": write_neus2_scene(root / "neus2", n=4, size=16),
        "neus": write_neus_folder(root / "neus", n=4)[0],
    }


def load_everything(scene_path: Path) -> None:
    """What ``inspect --check`` does to a scene; only a ``UserError`` may escape."""
    try:
        scene = load_scene(scene_path)
        validate_scene(scene, workers=1, progress=False)
        describe_scene(scene, max_views=4, workers=1, progress=False)
    except UserError as err:
        assert str(err).strip()  # a message, naming something


# --------------------------------------------------------------------------------------------
# File-level damage, shared by all formats.


def _other_image(kind: str, path: Path) -> None:
    """Replace ``path`` by a valid image of another layout or size (a legal or illegal variant)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    if kind == "gray":
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(path, format="PNG")
    elif kind == "gray16":
        Image.fromarray(rng.integers(0, 65536, (16, 16)).astype(np.uint16)).save(path, format="PNG")
    elif kind == "palette":
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("P").save(path, format="PNG")
    elif kind == "rgb":
        iio.imwrite(path, rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), extension=".png")
    elif kind == "empty-alpha":
        iio.imwrite(path, np.zeros((16, 16, 4), dtype=np.uint8), extension=".png")
    elif kind == "other-size":
        iio.imwrite(path, rng.integers(0, 256, (7, 9, 4), dtype=np.uint8), extension=".png")
    elif kind == "cmyk":
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert("CMYK").save(path, format="JPEG")


def damage_file(data: st.DataObject, files: list[Path]) -> None:
    """One file-level mutation of one of ``files`` (images, masks, the scene file)."""
    path = data.draw(st.sampled_from(files), label="file")
    op = data.draw(
        st.sampled_from(["truncate", "garbage", "folder", "delete", "empty", "image"]), label=f"{path.name} op"
    )
    if op == "truncate":
        content = path.read_bytes()
        path.write_bytes(content[: data.draw(st.integers(0, max(0, len(content) - 1)), label="keep")])
    elif op == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
    elif op == "folder":
        path.unlink()
        path.mkdir()
    elif op == "delete":
        path.unlink()
    elif op == "empty":
        path.write_bytes(b"")
    else:
        kind = data.draw(
            st.sampled_from(["gray", "gray16", "palette", "rgb", "empty-alpha", "other-size", "cmyk"]), label="kind"
        )
        _other_image(kind, path)


# --------------------------------------------------------------------------------------------
# JSON scenes (Blender/NGP and NeuS2).


def _node_paths(node, prefix=()) -> list[tuple]:
    """Every key path into a parsed JSON value (dict keys and list indices), the root excluded."""
    paths = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in items:
        paths.append((*prefix, key))
        paths += _node_paths(child, (*prefix, key))
    return paths


#: Keys the JSON loaders read: set (or add) one of them to a bad value at the top level or in a frame.
TOP_KEYS = (
    "frames", "scale", "offset", "aabb", "aabb_scale", "w", "h", "fl_x", "fl_y", "cx", "cy",
    "camera_angle_x", "camera_angle_y", "k1", "k2", "p1", "p2", "from_na", "integer_pixel_centers",
)  # fmt: skip
FRAME_KEYS = (
    "file_path", "transform_matrix", "intrinsic_matrix", "mask_path", "split", "w", "h", "fl_x", "cx",
    "camera_angle_x", "k1",
)  # fmt: skip


def mutate_json(data: st.DataObject, meta: dict) -> None:
    """Delete, retype or replace one value of ``meta`` (in place): a known key at the top level
    or in a frame (added when absent), or any value anywhere (a matrix entry, a frame)."""
    where = data.draw(st.sampled_from(["top", "frame", "anywhere"]), label="where")
    frames = meta.get("frames")
    if where == "top" or (where == "frame" and not (isinstance(frames, list) and frames)):
        parent, key = meta, data.draw(st.sampled_from(TOP_KEYS), label="top key")
    elif where == "frame":
        parent = frames[data.draw(st.integers(0, len(frames) - 1), label="frame")]
        if not isinstance(parent, dict):
            return
        key = data.draw(st.sampled_from(FRAME_KEYS), label="frame key")
    else:
        path = data.draw(st.sampled_from(_node_paths(meta)), label="json path")
        parent = meta
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
    if data.draw(st.booleans(), label="delete"):
        if isinstance(parent, dict):
            parent.pop(key, None)
        else:
            del parent[key]
    else:
        parent[key] = data.draw(BAD_VALUES, label=f"value of {key!r}")


@pytest.mark.parametrize("fmt", ["blender", "neus2"])
@FUZZ
@given(data=st.data())
def test_json_scene_mutations_raise_only_user_errors(templates, fmt, data):
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / fmt
        shutil.copytree(templates[fmt], scene)
        jsons = sorted(scene.glob("*.json"))
        for _ in range(data.draw(st.integers(1, 3), label="n mutations")):
            if data.draw(st.booleans(), label="json or file"):
                path = data.draw(st.sampled_from(jsons), label="json")
                if not path.is_file():
                    continue
                try:
                    meta = json.loads(path.read_text())
                except ValueError:
                    continue  # already damaged by an earlier file mutation
                if isinstance(meta, dict) and meta:
                    mutate_json(data, meta)
                    path.write_text(json.dumps(meta))
            else:
                files = [p for p in sorted(scene.rglob("*")) if p.is_file()]
                if files:
                    damage_file(data, files)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy overflow notes on 1e300-sized values
            load_everything(scene)


# --------------------------------------------------------------------------------------------
# NeuS/IDR folders.

BAD_ARRAYS = st.one_of(
    st.sampled_from(["nan", "inf", "huge", "tiny", "negative", "zeros", "scalar", "text", "int", "3x3", "4x4x1"]),
    st.tuples(st.integers(0, 5), st.integers(0, 5)),
)


@np.errstate(all="ignore")  # inf * 0 and 1e300 * x are the point here
def _bad_array(kind, good: np.ndarray) -> np.ndarray:
    if isinstance(kind, tuple):
        return np.ones(kind)
    return {
        "nan": np.where(np.eye(*good.shape) > 0, np.nan, good),
        "inf": good * np.inf,
        "huge": good * 1e300,
        "tiny": good * 1e-300,
        "negative": -good,
        "zeros": np.zeros_like(good),
        "scalar": np.float64(3.0),
        "text": np.full(good.shape, "x"),
        "int": good.astype(np.int64),
        "3x3": good[:3, :3],
        "4x4x1": good[..., None],
    }[kind]


def mutate_npz(data: st.DataObject, arrays: dict[str, np.ndarray]) -> None:
    """Delete, replace, rename or add one array of a ``cameras_sphere.npz`` (in place)."""
    key = data.draw(st.sampled_from(sorted(arrays)), label="npz key")
    op = data.draw(st.sampled_from(["delete", "replace", "entry", "rename", "add"]), label=f"{key} op")
    if op == "delete":
        del arrays[key]
    elif op == "replace":
        arrays[key] = _bad_array(data.draw(BAD_ARRAYS, label="array"), arrays[key])
    elif op == "entry" and arrays[key].shape == (4, 4):
        i, j = data.draw(st.tuples(st.integers(0, 3), st.integers(0, 3)), label="entry")
        value = data.draw(st.floats(allow_nan=True, allow_infinity=True), label="value")
        arrays[key] = arrays[key].astype(np.float64)
        arrays[key][i, j] = value
    elif op == "rename":
        arrays[data.draw(st.sampled_from(["world_mat_01", "world_mat_9", "scale_mat_7", "x"]))] = arrays.pop(key)
    elif op == "add":
        arrays[data.draw(st.sampled_from(["world_mat_4", "scale_mat_4", "world_mat_100"]))] = arrays[key]


@FUZZ
@given(data=st.data())
def test_neus_folder_mutations_raise_only_user_errors(templates, data):
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "neus"
        shutil.copytree(templates["neus"], scene)
        npz = scene / "cameras_sphere.npz"
        for _ in range(data.draw(st.integers(1, 3), label="n mutations")):
            op = data.draw(st.sampled_from(["npz", "file", "folder"]), label="what")
            if op == "npz" and npz.is_file():
                try:
                    with np.load(npz) as archive:
                        arrays = {k: archive[k] for k in archive.files}
                except Exception:
                    continue  # already damaged by an earlier file mutation
                if arrays:
                    mutate_npz(data, arrays)
                    np.savez(npz, **arrays)
            elif op == "file":
                files = [p for p in sorted(scene.rglob("*")) if p.is_file()]
                if files:
                    damage_file(data, files)
            else:
                folder = data.draw(st.sampled_from(["image", "mask"]), label="folder")
                action = data.draw(st.sampled_from(["remove", "extra-file", "extra-folder"]), label=folder)
                if not (scene / folder).is_dir():
                    continue
                if action == "remove":
                    shutil.rmtree(scene / folder)
                elif action == "extra-file":
                    iio.imwrite(scene / folder / "zzz.png", np.zeros((30, 40, 3), dtype=np.uint8))
                else:
                    (scene / folder / "000001b.png").mkdir(exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy overflow notes on 1e300-sized values
            load_everything(scene)
