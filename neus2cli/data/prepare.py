"""Photos -> a posed COLMAP scene (``neus2 prepare``): structure from motion with pycolmap.

Output folder ``OUT`` (the layout ``formats_colmap`` reads, so ``neus2 train OUT`` and
``neus2 inspect OUT`` work on it directly)::

    OUT/images/<NAME>          copies of the photos, under their own names
    OUT/sparse/0/              the model with the most registered images: cameras.bin, images.bin,
                               points3D.bin (COLMAP's binary format; pycolmap may add rigs.bin, frames.bin)
    OUT/sparse/1/ ...          further models, largest first, when the photos split into groups
    OUT/database.db            COLMAP's feature and match database (to rerun COLMAP tools on)

Steps: SIFT features per photo, exhaustive matching of every pair with geometric verification,
incremental mapping (bundle adjustment included). One camera shared by all photos when they have
one size, else one per photo, of the ``camera_model`` asked for (default
SIMPLE_RADIAL: focal, principal point, one radial coefficient; all of ``SUPPORTED_MODELS`` load
with their distortion). The world frame is the one COLMAP picks: arbitrary origin, orientation
and scale.

Why pycolmap rather than our own SfM: feature matching with RANSAC verification, robust
initialization and repeated bundle adjustment are COLMAP's decade of engineering; it is also what
NeuS2, nerfstudio and sdfstudio users already run by hand. The extra is optional (a ~40 MB wheel).

The folder is built beside ``OUT`` and moved into place at the end: a failed or interrupted run
leaves no half scene.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from neus2cli import log
from neus2cli.data.formats_colmap import SUPPORTED_MODELS
from neus2cli.data.images import IMAGE_EXTENSIONS
from neus2cli.errors import DependencyError, UserError
from neus2cli.io import check_writable
from neus2cli.progress import ProgressReporter

COLMAP_EXTRA = "neus2cli[colmap]"
#: Structure from motion needs at least three views to fix a scene (two only give a relative pose).
MIN_PHOTOS = 3


def import_pycolmap():
    """The ``pycolmap`` module, or a ``DependencyError`` naming the extra that installs it."""
    try:
        import pycolmap
    except ImportError as err:
        raise DependencyError(
            f"neus2 prepare runs structure from motion with the pycolmap package, which is not importable "
            f"here ({err}).",
            hint=f"Install the extra: pip install '{COLMAP_EXTRA}' (or pip install pycolmap). Or run COLMAP "
            "yourself and give its folder (images/ + sparse/0/) to neus2 train.",
        ) from None
    return pycolmap


def list_photos(photos_dir: str | Path) -> list[Path]:
    """The photos of ``photos_dir`` (its own files with an image extension, sorted by name), all decodable.

    Raises:
        UserError: the folder is missing or a file, holds fewer than ``MIN_PHOTOS`` photos, or some
            photos cannot be decoded (all of those are named).
    """
    photos_dir = Path(photos_dir)
    if not photos_dir.exists():
        raise UserError("the photo folder does not exist.", path=photos_dir, hint="Check PHOTOS_DIR.")
    if not photos_dir.is_dir():
        raise UserError(
            "PHOTOS_DIR must be a folder of photos, not a file.",
            path=photos_dir,
            hint="Give the folder that holds the images.",
        )
    files = sorted(p for p in photos_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    photos = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if len(photos) < MIN_PHOTOS:
        others = [p.name for p in files if p not in photos]
        skipped = f" ({len(others)} other file(s) skipped, e.g. {', '.join(others[:3])})" if others else ""
        raise UserError(
            f"found {len(photos)} photo(s) ({', '.join(IMAGE_EXTENSIONS)}){skipped}, but structure from motion "
            f"needs at least {MIN_PHOTOS}.",
            path=photos_dir,
            hint="Take more photos all around the object, each overlapping its neighbours (20-100 is typical); "
            "convert other formats (HEIC, TIFF, RAW) to JPEG or PNG first.",
        )
    unreadable = []
    for path in photos:
        try:
            with Image.open(path) as image:
                image.load()  # the whole file: a truncated photo fails here, not halfway through COLMAP
        except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, DecompressionBombError)
            unreadable.append(f"{path.name} ({type(err).__name__})")
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
        raise UserError(
            f"{len(unreadable)} of the {len(photos)} photos cannot be decoded: {shown}.",
            path=photos_dir,
            hint="Re-export or remove them, then run neus2 prepare again.",
        )
    return photos


def _check_out(photos_dir: Path, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError("OUT exists and is not a folder.", path=out, hint="Give a new or empty folder for OUT.")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            "OUT is not empty.", path=out, hint="Choose a new folder: prepare writes images/, sparse/ and database.db."
        )
    if out.resolve() == photos_dir.resolve():
        raise UserError("OUT is the photo folder itself.", path=out, hint="Give a new folder for OUT.")
    check_writable(out, "OUT")


@dataclass
class PrepareResult:
    """What ``prepare_scene`` made.

    Attributes:
        out: the scene folder.
        photos: photos given; ``registered``: photos posed in the main model (``sparse/0``).
        points: 3D points of the main model; ``models``: models written (groups of photos that
            could not be joined).
        reprojection_error: mean reprojection error of the main model, pixels.
        unregistered: names of the photos the main model lacks.
    """

    out: Path
    photos: int
    registered: int
    points: int
    models: int
    reprojection_error: float
    unregistered: list[str] = field(default_factory=list)


def prepare_scene(
    photos_dir: str | Path,
    out: str | Path,
    *,
    camera_model: str = "SIMPLE_RADIAL",
    max_image_size: int = 3200,
    num_threads: int = -1,
    seed: int = 0,
    progress: bool = True,
) -> PrepareResult:
    """Run structure from motion on the photos of ``photos_dir`` and write the COLMAP scene ``out``.

    Args:
        photos_dir: folder of photos (``list_photos``).
        out: scene folder to create (absent or empty); layout in the module docstring.
        camera_model: COLMAP camera model, one of ``SUPPORTED_MODELS``.
        max_image_size: photos are downscaled to this longest side for feature extraction only
            (poses and intrinsics stay in the photos' own pixels).
        num_threads: CPU threads for COLMAP (-1: all).
        seed: COLMAP's random seed (RANSAC, initial pair trials). With several threads, runs still
            differ slightly (measured: 3236 vs 3245 points, cameras within 0.3 % of the truth in both).
        progress: a line (or bar) per phase on stderr.

    Raises:
        DependencyError: pycolmap is missing (names ``neus2cli[colmap]``).
        UserError: bad input (``list_photos``), an ``out`` that is not new or empty, an unknown
            ``camera_model``, or photos from which no model could be built.
    """
    photos_dir, out = Path(photos_dir), Path(out)
    if camera_model not in SUPPORTED_MODELS:
        raise UserError(
            f"--camera-model {camera_model} is not one neus2 loads; choose one of {', '.join(SUPPORTED_MODELS)}."
        )
    photos = list_photos(photos_dir)
    _check_out(photos_dir, out)
    pycolmap = import_pycolmap()
    # A hidden sibling (same file system, so the final rename is atomic); mkdir, not mkdtemp, for
    # the usual permissions.
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        result = _run_sfm(pycolmap, photos, tmp, camera_model, max_image_size, num_threads, seed, progress)
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot replace a folder
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename
    result.out = out
    return result


def _run_sfm(
    pycolmap, photos: list[Path], root: Path, camera_model: str, max_image_size: int, threads: int, seed: int, progress
) -> PrepareResult:
    """The three COLMAP phases into ``root`` (a fresh folder); see ``prepare_scene``."""
    image_dir = root / "images"
    image_dir.mkdir()
    for path in photos:
        shutil.copy2(path, image_dir / path.name)
    database = root / "database.db"
    n = len(photos)
    # COLMAP logs every step (and its failures, which become our UserErrors) through glog on
    # stderr; our progress lines and messages say what matters. 3: fatal only.
    pycolmap.logging.minloglevel = 3

    # One camera when every photo has the same size (one camera, one zoom: the usual capture): its
    # intrinsics are then fitted to all photos at once. COLMAP's "auto" mode would give each photo
    # without EXIF focal length its own camera, and registration then fails after a few photos.
    sizes = set()
    for path in photos:
        with Image.open(path) as image:  # the header only
            sizes.add(image.size)
    single_camera = len(sizes) == 1
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = threads
    with ProgressReporter(1, f"extracting features of {n} photos", enabled=progress) as bar:
        pycolmap.extract_features(
            database,
            image_dir,
            camera_mode=pycolmap.CameraMode.SINGLE if single_camera else pycolmap.CameraMode.PER_IMAGE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        bar.update(1)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    with ProgressReporter(1, f"matching {n * (n - 1) // 2} photo pairs", enabled=progress) as bar:
        pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
        bar.update(1)

    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = threads
    options.random_seed = seed
    sparse_tmp = root / "sparse_unsorted"
    sparse_tmp.mkdir()
    with ProgressReporter(n, "registering photos", enabled=progress) as bar:
        registered = [0]

        def next_image() -> None:
            registered[0] += 1
            bar.update(min(registered[0], n))

        def initial_pair() -> None:
            registered[0] = 2
            bar.update(2)

        models = pycolmap.incremental_mapping(
            database,
            image_dir,
            sparse_tmp,
            options=options,
            initial_image_pair_callback=initial_pair,
            next_image_callback=next_image,
        )
        models = sorted(models.values(), key=lambda rec: rec.num_reg_images(), reverse=True)
        bar.update(models[0].num_reg_images() if models else 0)  # the main model's count, not the attempts'
    if not models or models[0].num_reg_images() < MIN_PHOTOS:
        raise UserError(
            f"structure from motion could not pose the photos (it found no set of {MIN_PHOTOS} or more photos "
            "that overlap well enough).",
            path=photos[0].parent,
            hint="Photos need overlap (each view shares most of its content with its neighbours), texture "
            "(plain walls and shiny or transparent objects have no features to match), and sharp focus.",
        )
    for index, rec in enumerate(models):
        folder = root / "sparse" / str(index)
        folder.mkdir(parents=True)
        rec.write(folder)
    shutil.rmtree(sparse_tmp)
    main = models[0]
    names = {main.image(i).name for i in main.reg_image_ids()}
    unregistered = sorted(p.name for p in photos if p.name not in names)
    if unregistered:
        shown = ", ".join(unregistered[:5]) + (" ..." if len(unregistered) > 5 else "")
        log.warn(f"{len(unregistered)} of the {n} photos could not be posed and are not in sparse/0: {shown}")
    return PrepareResult(
        out=root,
        photos=n,
        registered=main.num_reg_images(),
        points=main.num_points3D(),
        models=len(models),
        reprojection_error=float(main.compute_mean_reprojection_error()),
        unregistered=unregistered,
    )
