"""``neus2 inspect`` and ``neus2 convert-neus`` on bad input: one row per input, exit code 2,
a message that names the cause, no traceback, nothing already written lost."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from tests.cli_table import Row, run_row
from tests.test_data_scenes import write_blender_scene, write_neus2_scene, write_neus_folder

# --------------------------------------------------------------------------------------------
# Builders: each returns the placeholder values of its row ({scene}, {dst}, ...).


def blender(edit=None, **kwargs):
    """A Blender scene at {scene}; ``edit(meta)`` changes its transforms.json."""

    def setup(root: Path) -> dict[str, str]:
        scene = write_blender_scene(root / "scene", **kwargs)
        if edit is not None:
            path = scene / "transforms.json"
            meta = json.loads(path.read_text())
            result = edit(meta)
            path.write_text(result if isinstance(result, str) else json.dumps(meta))
        return {"scene": str(scene)}

    return setup


def frame0(key, value):
    """Edit: set (or with ``value`` None, delete) a key of frame 0."""

    def edit(meta):
        if value is None:
            del meta["frames"][0][key]
        else:
            meta["frames"][0][key] = value

    return edit


def top(key, value):
    def edit(meta):
        meta[key] = value

    return edit


def blender_files(fn, **kwargs):
    """A Blender scene at {scene}; ``fn(scene)`` changes its files."""

    def setup(root: Path) -> dict[str, str]:
        scene = write_blender_scene(root / "scene", **kwargs)
        fn(scene)
        return {"scene": str(scene)}

    return setup


def neus(fn=None):
    """A 4-view NeuS folder at {scene} (40x30 images), {dst} beside it; ``fn(scene)`` changes its files."""

    def setup(root: Path) -> dict[str, str]:
        scene, _, _ = write_neus_folder(root / "scene", n=4)
        if fn is not None:
            fn(scene)
        return {"scene": str(scene), "dst": str(root / "out")}

    return setup


def edit_npz(fn):
    def change(scene: Path) -> None:
        path = scene / "cameras_sphere.npz"
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
        fn(data)
        np.savez(path, **data)

    return change


def truncate(path: Path, keep: int = 60) -> None:
    """Keep the first bytes: the PNG header (size) still reads, the pixels do not."""
    path.write_bytes(path.read_bytes()[:keep])


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def rgb_only(path: Path) -> None:
    """Drop the alpha channel: the view no longer has a mask."""
    iio.imwrite(path, iio.imread(path)[..., :3])


def clear_alpha(path: Path) -> None:
    image = iio.imread(path)
    image[..., 3] = 0
    iio.imwrite(path, image)


def each(pattern: str, fn):
    def change(scene: Path) -> None:
        for path in sorted(scene.glob(pattern)):
            fn(path)

    return change


def dynamic(fn):
    """A two-frame dynamic sequence at {scene}; ``fn(scene)`` changes its files."""

    def setup(root: Path) -> dict[str, str]:
        seq = write_neus2_scene(root / "seq", name="0000.json", test_name=None)
        (seq / "0001.json").write_text((seq / "0000.json").read_text())
        fn(seq)
        return {"scene": str(seq)}

    return setup


def plain(name: str, content: bytes | None = None, folder: bool = False):
    def setup(root: Path) -> dict[str, str]:
        path = root / name
        if folder:
            path.mkdir(parents=True)
        elif content is not None:
            path.write_bytes(content)
        return {"scene": str(path)}

    return setup


def good_blender_and(**extra):
    """A good Blender scene at {scene}, plus files named in ``extra`` ({key}: relative path -> bytes or None)."""

    def setup(root: Path) -> dict[str, str]:
        values = {"scene": str(write_blender_scene(root / "scene"))}
        for key, (rel, content) in extra.items():
            path = root / rel
            if content is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            values[key] = str(path)
        return values

    return setup


def with_dst(contents: dict[str, bytes] | None = None, dst_is_file: bool = False, fn=None):
    """A NeuS folder at {scene} (``neus(fn)``) and a destination {dst} holding ``contents`` (or being a file)."""

    def setup(root: Path) -> dict[str, str]:
        values = neus(fn)(root)
        dst = Path(values["dst"])
        if dst_is_file:
            dst.write_bytes(b"precious")
        for rel, data in (contents or {}).items():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes(data)
        return values

    return setup


def dst_unchanged(contents: dict[str, bytes] | None = None, dst_is_file: bool = False):
    """Check: {dst} holds exactly what the setup put there, and no temporary folder is left beside it."""

    def check(values: dict[str, str]) -> None:
        dst = Path(values["dst"])
        if dst_is_file:
            assert dst.read_bytes() == b"precious"
        elif contents is None:
            assert not dst.exists()
        else:
            found = {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
            assert found == contents
        assert not [p.name for p in dst.parent.iterdir() if p.name.endswith(".tmp")]

    return check


OLD = {"notes.txt": b"mine", "images/000000.png": b"old", "transform_train.json": b"{}"}


def first_image_truncated(scene: Path) -> None:
    truncate(sorted((scene / "image").iterdir())[-1])  # the last one: the others are written first


def under_a_file(name: str):
    """{dst}/{plot}: a location under an existing *file*, unwritable even for root."""

    def setup(root: Path) -> dict[str, str]:
        values = neus()(root)
        (root / "blocker").write_bytes(b"a file")
        values["dst"] = values["plot"] = str(root / "blocker" / name)
        return values

    return setup


def bracket_scene(name: str):
    def setup(root: Path) -> dict[str, str]:
        return {"scene": str(write_blender_scene(root / name))}

    return setup


def bracket_neus(name: str):
    def setup(root: Path) -> dict[str, str]:
        values = neus()(root)
        values["dst"] = str(root / name)
        return values

    return setup


def dup_stem(scene: Path) -> None:
    """000003.jpg beside 000003.png: both would become images/000003.png (the mask stays 4 of 4)."""
    first = sorted((scene / "image").iterdir())[-1]
    first.rename(first.with_suffix(".jpg").with_name("000002.jpg"))


INSPECT = [
    # Where the scene is and what it is.
    Row("missing", ("inspect", "{root}/nope"), ("scene not found", "nope")),
    Row("not-json-file", ("inspect", "{scene}"), ("not a scene file",), plain("notes.txt", b"hello")),
    Row("empty-folder", ("inspect", "{scene}"), ("no scene found",), plain("empty", folder=True)),
    Row(
        "jsons-without-frames",
        ("inspect", "{scene}"),
        ("none of the top-level json files has a 'frames' list",),
        blender_files(
            lambda s: (s / "transforms.json").unlink() or [(s / n).write_text("{}") for n in ("a.json", "b.json")]
        ),
    ),
    # JSON syntax and structure.
    Row("bad-json", ("inspect", "{scene}"), ("invalid json at line",), blender(lambda m: '{"frames": [,]}')),
    Row("json-list", ("inspect", "{scene}"), ("expected a json object",), blender(lambda m: "[1, 2]")),
    Row("no-frames", ("inspect", "{scene}"), ("no 'frames' list",), blender(lambda m: m.pop("frames"))),
    Row("frames-not-list", ("inspect", "{scene}"), ("no 'frames' list",), blender(top("frames", 5))),
    Row("zero-frames", ("inspect", "{scene}"), ("has no frames",), blender(top("frames", []))),
    Row(
        "frame-not-object",
        ("inspect", "{scene}"),
        ("frame 0: expected an object",),
        blender(lambda m: m["frames"].__setitem__(0, 7)),
    ),
    Row("no-pose", ("inspect", "{scene}"), ("missing 'transform_matrix'",), blender(frame0("transform_matrix", None))),
    Row("pose-shape", ("inspect", "{scene}"), ("4x4 or 3x4 matrix",), blender(frame0("transform_matrix", [[1, 2]]))),
    Row("pose-text", ("inspect", "{scene}"), ("non-numeric",), blender(frame0("transform_matrix", "eye"))),
    Row(
        "pose-nan",
        ("inspect", "{scene}"),
        ("nan or infinite",),
        blender(frame0("transform_matrix", [[float("nan")] * 4] * 4)),
    ),
    Row(
        "pose-scaled",
        ("inspect", "{scene}"),
        ("not orthonormal", "frame 0"),
        blender(frame0("transform_matrix", (2 * np.eye(4)).tolist())),
    ),
    Row("no-file-path", ("inspect", "{scene}"), ("missing or empty 'file_path'",), blender(frame0("file_path", None))),
    Row(
        "image-missing",
        ("inspect", "{scene}"),
        ("not found", "v00"),
        blender_files(lambda s: (s / "rgb/v00.png").unlink()),
    ),
    Row(
        "image-is-folder",
        ("inspect", "{scene}"),
        ("is a folder, not an image file", "rgb/v00.png"),
        blender_files(lambda s: replace_with_folder(s / "rgb/v00.png"), ext_in_path=True),
    ),
    Row(
        "image-garbage",
        ("inspect", "{scene}"),
        ("cannot read the image header", "v01.png"),
        blender_files(lambda s: (s / "rgb/v01.png").write_bytes(b"not a png at all")),
    ),
    Row(
        "image-truncated",
        ("inspect", "{scene}", "--check"),
        ("cannot decode the image", "v02.png"),
        blender_files(lambda s: truncate(s / "rgb/v02.png")),
    ),
    Row("image-exr", ("inspect", "{scene}"), (".exr images are not supported",), blender(frame0("file_path", "x.exr"))),
    Row(
        "fov-negative",
        ("inspect", "{scene}"),
        ("'camera_angle_x' must be in (0, pi)",),
        blender(top("camera_angle_x", -1)),
    ),
    Row(
        "fov-text",
        ("inspect", "{scene}"),
        ("'camera_angle_x' must be a number",),
        blender(top("camera_angle_x", "wide")),
    ),
    Row("no-intrinsics", ("inspect", "{scene}"), ("no intrinsics",), blender(lambda m: m.pop("camera_angle_x"))),
    Row(
        "w-infinite",
        ("inspect", "{scene}"),
        ("'w' and 'h' must be integers",),
        blender(lambda m: m.update(w=1e999, h=32)),
    ),
    Row(
        "w-negative", ("inspect", "{scene}"), ("image size must be positive",), blender(lambda m: m.update(w=-32, h=32))
    ),
    Row(
        "size-mismatch",
        ("inspect", "{scene}", "--check"),
        ("do not match the size", "64x64"),
        blender(lambda m: m.update(w=64, h=64, fl_x=40.0)),
    ),
    Row("scale-negative", ("inspect", "{scene}"), ("'scale' must be a positive",), blender(top("scale", -0.5))),
    Row(
        "scale-huge-int",
        ("inspect", "{scene}"),
        ("'scale' must be a number",),
        blender(lambda m: '{"scale": 1' + "0" * 400 + ', "frames": []}'),
    ),
    Row("offset-nan", ("inspect", "{scene}"), ("must be finite",), blender(top("offset", [float("nan"), 0, 0]))),
    Row(
        "distortion-nan", ("inspect", "{scene}"), ("distortion", "must be finite"), blender(frame0("k1", float("nan")))
    ),
    Row(
        "mask-path-number",
        ("inspect", "{scene}"),
        ("'mask_path' must be a non-empty string",),
        blender(frame0("mask_path", 3)),
    ),
    Row(
        "mask-path-folder",
        ("inspect", "{scene}"),
        ("mask 'rgb' is a folder",),
        blender(frame0("mask_path", "rgb")),
    ),
    Row("unknown-split", ("inspect", "{scene}"), ("unknown split 'dev'",), blender(frame0("split", "dev"))),
    Row(
        "cameras-look-away",
        ("inspect", "{scene}"),
        ("centre of the reconstruction box", "behind"),
        blender(top("offset", [0.5, 0.5, 5.0])),
    ),
    # Pixels: masks.
    Row(
        "mixed-masks",
        ("inspect", "{scene}"),
        ("mixes masked and unmasked views", "v01"),
        blender_files(lambda s: rgb_only(s / "rgb/v01.png")),
    ),
    Row(
        "mixed-masks-check",
        ("inspect", "{scene}", "--check"),
        ("mixes masked and unmasked views",),
        blender_files(lambda s: rgb_only(s / "rgb/v03.png")),
    ),
    Row(
        "masks-all-empty",
        ("inspect", "{scene}", "--check"),
        ("every mask is empty",),
        blender_files(each("rgb/*.png", clear_alpha)),
    ),
    Row(
        "masks-all-empty-sampled",
        ("inspect", "{scene}", "--max-views", "4"),
        ("every mask is empty",),
        blender_files(each("rgb/*.png", clear_alpha)),
    ),
    # Dynamic sequences.
    Row(
        "dynamic-frame-is-folder",
        ("inspect", "{scene}"),
        ("0002.json", "is a folder, not a json file"),
        dynamic(lambda s: (s / "0002.json").mkdir()),
    ),
    Row(
        "dynamic-frame-bad-json",
        ("inspect", "{scene}"),
        ("0001.json", "invalid json"),
        dynamic(lambda s: (s / "0001.json").write_text("{")),
    ),
    # NeuS/IDR folders.
    Row(
        "npz-garbage",
        ("inspect", "{scene}"),
        ("cannot read the camera file",),
        neus(lambda s: (s / "cameras_sphere.npz").write_bytes(b"junk")),
    ),
    Row(
        "npz-is-folder",
        ("inspect", "{scene}"),
        ("is a folder, not a camera file",),
        neus(lambda s: replace_with_folder(s / "cameras_sphere.npz")),
    ),
    Row(
        "world-mat-missing",
        ("inspect", "{scene}"),
        ("world_mat_2 is missing",),
        neus(edit_npz(lambda d: d.pop("world_mat_2"))),
    ),
    Row(
        "world-mat-shape",
        ("inspect", "{scene}"),
        ("world_mat_1 must be 3x4 or 4x4",),
        neus(edit_npz(lambda d: d.update(world_mat_1=np.eye(3)))),
    ),
    Row(
        "world-mat-text",
        ("inspect", "{scene}"),
        ("world_mat_0 must be a numeric",),
        neus(edit_npz(lambda d: d.update(world_mat_0=np.array([["a"] * 4] * 4)))),
    ),
    Row(
        "world-mat-zero",
        ("inspect", "{scene}"),
        ("world_mat_0 is not a valid projection",),
        neus(edit_npz(lambda d: d.update(world_mat_0=np.zeros((4, 4))))),
    ),
    Row(
        "world-mat-nan",
        ("inspect", "{scene}"),
        ("world_mat_3 contains nan",),
        neus(edit_npz(lambda d: d["world_mat_3"].__setitem__((0, 0), np.nan))),
    ),
    Row(
        "scale-mat-missing",
        ("inspect", "{scene}"),
        ("scale_mat_1 is missing",),
        neus(edit_npz(lambda d: d.pop("scale_mat_1"))),
    ),
    Row(
        "scale-mat-differs",
        ("inspect", "{scene}"),
        ("scale_mat_2 differs from scale_mat_0",),
        neus(edit_npz(lambda d: d.update(scale_mat_2=np.eye(4)))),
    ),
    Row(
        "scale-mat-zero",
        ("inspect", "{scene}"),
        ("not a uniform scale",),
        neus(edit_npz(lambda d: [d.update({f"scale_mat_{i}": np.diag([0.0, 0, 0, 1])}) for i in range(4)])),
    ),
    Row(
        "too-few-images",
        ("inspect", "{scene}"),
        ("3 images in image/ but 4 cameras",),
        neus(lambda s: sorted((s / "image").iterdir())[0].unlink()),
    ),
    Row(
        "image-entry-folder",
        ("inspect", "{scene}"),
        ("000001.png", "is a folder, not an image file"),
        neus(lambda s: replace_with_folder(s / "image/000001.png")),
    ),
    Row("mask-count", ("inspect", "{scene}"), ("3 masks in mask/",), neus(lambda s: (s / "mask/003.png").unlink())),
    Row(
        "mask-resolution",
        ("inspect", "{scene}"),
        ("same resolution",),
        neus(lambda s: iio.imwrite(s / "mask/001.png", np.zeros((8, 8), dtype=np.uint8))),
    ),
    Row(
        "neus-masks-all-empty",
        ("inspect", "{scene}"),
        ("every mask is empty",),
        neus(each("mask/*.png", lambda p: iio.imwrite(p, np.zeros((30, 40), dtype=np.uint8)))),
    ),
    # --plot and the other options.
    Row("plot-txt", ("inspect", "{scene}", "--plot", "{root}/x.txt"), ("--plot", ".txt", ".png"), blender()),
    Row("plot-no-suffix", ("inspect", "{scene}", "--plot", "{root}/plot"), ("--plot", "suffix-less"), blender()),
    Row(
        "plot-is-folder",
        ("inspect", "{scene}", "--plot", "{root}/d.png"),
        ("--plot: is a folder",),
        good_blender_and(d=("d.png/x", b"")),
    ),
    Row(
        "plot-under-file",
        ("inspect", "{scene}", "--plot", "{plot}"),
        ("--plot", "blocker is a file"),
        under_a_file("c.png"),
    ),
    Row("max-views-negative", ("inspect", "{root}", "--max-views", "-1"), ("--max-views",)),
    # User strings are printed as they are, never as rich markup.
    Row("markup-missing", ("inspect", "{root}/scan[/x]"), ("scan[/x]", "scene not found")),
    Row("markup-bad", ("inspect", "{scene}"), ("scan[v2]", "no scene found"), plain("scan[v2]", folder=True)),
    Row(
        "markup-good",
        ("inspect", "{scene}"),
        ("scan[bold][v2]", "8 (8 train, 0 test)"),
        bracket_scene("scan[bold][v2]"),
        code=0,
    ),
]

CONVERT = [
    Row("src-missing", ("convert-neus", "{root}/nope", "{root}/out"), ("scene not found",)),
    Row("src-blender", ("convert-neus", "{scene}", "{root}/out"), ("not a neus/idr folder",), blender()),
    Row(
        "dst-is-file",
        ("convert-neus", "{scene}", "{dst}"),
        ("exists and is not a folder",),
        with_dst(dst_is_file=True),
        check=dst_unchanged(dst_is_file=True),
    ),
    Row(
        "dst-not-empty",
        ("convert-neus", "{scene}", "{dst}"),
        ("not empty", "--force"),
        with_dst(OLD),
        check=dst_unchanged(OLD),
    ),
    Row("dst-under-file", ("convert-neus", "{scene}", "{dst}"), ("dst", "blocker is a file"), under_a_file("out")),
    Row("dst-is-src", ("convert-neus", "{scene}", "{scene}"), ("same folder",), neus()),
    Row(
        "dst-images-is-file",
        ("convert-neus", "{scene}", "{dst}", "--force"),
        ("images", "is not a folder"),
        with_dst({"images": b"x"}),
        check=dst_unchanged({"images": b"x"}),
    ),
    Row("test-views-text", ("convert-neus", "{scene}", "{dst}", "--test-views", "1,x"), ("comma-separated",), neus()),
    Row("test-views-negative", ("convert-neus", "{scene}", "{dst}", "--test-views=-1"), (">= 0",), neus()),
    Row(
        "test-views-missing",
        ("convert-neus", "{scene}", "{dst}", "--test-views", "1,99"),
        ("names view(s) 99", "4 views"),
        neus(),
        check=dst_unchanged(),
    ),
    Row(
        "test-views-all",
        ("convert-neus", "{scene}", "{dst}", "--test-views", "0,1,2,3"),
        ("holds out all 4 views",),
        neus(),
    ),
    Row(
        "test-views-and-no-split",
        ("convert-neus", "{scene}", "{dst}", "--test-views", "1", "--no-split"),
        ("contradict",),
        neus(),
    ),
    Row(
        "world-mat-missing",
        ("convert-neus", "{scene}", "{dst}"),
        ("world_mat_3 is missing",),
        neus(edit_npz(lambda d: d.pop("world_mat_3"))),
    ),
    Row(
        "image-entry-folder",
        ("convert-neus", "{scene}", "{dst}"),
        ("is a folder, not an image file",),
        neus(lambda s: replace_with_folder(s / "image/000000.png")),
    ),
    Row("duplicate-stems", ("convert-neus", "{scene}", "{dst}"), ("share the name",), neus(dup_stem)),
    Row(
        "fails-midway",
        ("convert-neus", "{scene}", "{dst}"),
        ("cannot decode the image", "000003.png"),
        neus(first_image_truncated),
        check=dst_unchanged(),
    ),
    Row(
        "fails-midway-force",
        ("convert-neus", "{scene}", "{dst}", "--force"),
        ("cannot decode the image",),
        with_dst(OLD, fn=first_image_truncated),
        check=dst_unchanged(OLD),
    ),
    Row(
        "masks-all-empty",
        ("convert-neus", "{scene}", "{dst}"),
        ("every mask is empty",),
        neus(each("mask/*.png", lambda p: iio.imwrite(p, np.zeros((30, 40), dtype=np.uint8)))),
        check=dst_unchanged(),
    ),
    Row(
        "markup-dst",
        ("convert-neus", "{scene}", "{dst}"),
        ("out[bold][v2]", "wrote 4 images"),
        bracket_neus("out[bold][v2]"),
        code=0,
    ),
]


@pytest.mark.parametrize("row", INSPECT + CONVERT, ids=lambda r: f"{r.argv[0]}-{r.id}")
def test_bad_input(row, tmp_path):
    run_row(row, tmp_path)


def test_table_ids_are_unique_and_cover_both_commands():
    ids = [(r.argv[0], r.id) for r in INSPECT + CONVERT]
    assert len(set(ids)) == len(ids)
    assert len([r for r in INSPECT + CONVERT if r.code == 2]) >= 40
