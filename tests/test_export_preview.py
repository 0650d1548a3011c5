"""Software rasterizer (silhouette, depth test, shading vs closed forms) and the run pictures built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from PIL import Image

from neus2cli.export.raster import (
    AMBIENT,
    FOV_DEG,
    NEUTRAL_GREY,
    orbit_cameras,
    rasterize,
    render_mesh_views,
    shade,
    up_from_cameras,
)
from neus2cli.train.preview import (
    GAP,
    LINE,
    NOTE_INK,
    SheetFrame,
    pick_frames,
    preview_caption,
    sheet_caption,
    write_contact_sheet,
    write_run_preview,
)

SIZE = 128


def _unit_sphere() -> tuple[trimesh.Trimesh, float, float]:
    """Icosphere of radius 1 at the origin, with its inradius and its largest edge angle (radians)."""
    mesh = trimesh.creation.icosphere(subdivisions=4)
    # Every face plane's distance to the centre: the inscribed sphere touches the nearest.
    r_in = float(np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.vertices[mesh.faces[:, 0]])).min())
    e = mesh.edges_unique
    edge_angle = float(np.arccos(np.einsum("ij,ij->i", mesh.vertices[e[:, 0]], mesh.vertices[e[:, 1]])).max())
    return mesh, r_in, edge_angle


def _front_camera():
    c2ws, K = orbit_cameras(np.zeros(3), 1.0, SIZE, azimuths_deg=(0.0,), elevation_deg=0.0)
    return c2ws[0], K


def test_sphere_silhouette_is_its_projected_disc():
    mesh, r_in, _ = _unit_sphere()
    c2w, K = _front_camera()
    raster = rasterize(mesh.vertices, mesh.faces, c2w, K, SIZE, SIZE)
    d, f = np.linalg.norm(c2w[:3, 3]), K[0, 0]
    # A sphere of radius r at distance d on the optical axis projects to a disc of radius
    # f tan(asin(r / d)) = f r / sqrt(d^2 - r^2). The polyhedron lies between its inscribed
    # sphere (r_in) and the unit sphere, so its silhouette lies between their discs.
    rho_out = f / math.sqrt(d**2 - 1)
    rho_in = f * r_in / math.sqrt(d**2 - r_in**2)
    # Pixel centres inside a disc of radius rho: every pixel square within rho - sqrt(2)/2 has its
    # centre inside, every covered pixel's square lies within rho + sqrt(2)/2.
    area = int(raster.mask.sum())
    assert math.pi * (rho_in - math.sqrt(0.5)) ** 2 <= area <= math.pi * (rho_out + math.sqrt(0.5)) ** 2
    # The disc is centred on the principal point (SIZE / 2): centroid within a tenth of a pixel
    # (the icosphere is symmetric about the image axes up to its faceting).
    ys, xs = np.nonzero(raster.mask)
    assert abs(xs.mean() + 0.5 - SIZE / 2) < 0.1 and abs(ys.mean() + 0.5 - SIZE / 2) < 0.1
    # Depth test: the centre shows the near side (depth d - 1 .. d - r_in), not the back (d + 1).
    centre_depth = raster.depth[SIZE // 2, SIZE // 2]
    assert d - 1 - 1e-9 <= centre_depth <= d - r_in + 1e-6


def test_lambert_shading_matches_closed_form_and_lit_side_is_brighter():
    mesh, _, edge_angle = _unit_sphere()
    c2w, K = _front_camera()
    light_cam = np.array([1.0, 0.0, -1.0]) / math.sqrt(2)  # from the right (+x), towards the viewer
    raster = rasterize(mesh.vertices, mesh.faces, c2w, K, SIZE, SIZE)
    image = shade(mesh, raster, c2w, light_cam=light_cam)
    grey = image[..., 0]
    # Centre: the normal points at the camera, (0, 0, -1) in its frame, so n.l = 1/sqrt(2) and the
    # value is grey * (ambient + (1 - ambient) / sqrt(2)). The interpolated normal is off the true one by
    # at most one edge angle, and the pixel centre half a pixel off the axis tilts it by < 1/rho rad.
    expected = NEUTRAL_GREY[0] * (AMBIENT + (1 - AMBIENT) / math.sqrt(2))
    tol = NEUTRAL_GREY[0] * (1 - AMBIENT) * (edge_angle + 1.0 / 50)
    assert abs(grey[SIZE // 2, SIZE // 2] - expected) <= tol
    # Mirror pixels: every lit-side pixel (x > centre) is brighter than its mirror image on the left.
    mask = raster.mask
    right, left = grey[:, SIZE // 2 + 8 :], grey[:, SIZE // 2 - 8 - 1 :: -1][:, : SIZE // 2 - 8]
    both = mask[:, SIZE // 2 + 8 :] & mask[:, SIZE // 2 - 8 - 1 :: -1][:, : SIZE // 2 - 8]
    assert both.sum() > 1000 and np.all(right[both] > left[both])
    assert np.all(image[~mask] == 1.0)  # white background


def test_vertex_colours_are_used():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    (image,) = render_mesh_views(mesh, 64, azimuths_deg=(0.0,))
    covered = np.any(image < 1.0, axis=-1)
    assert covered.sum() > 500
    assert np.all(image[covered][:, 1:] == 0.0) and np.all(image[covered][:, 0] > 0.0)


def test_orbit_cameras_look_at_the_centre_from_above():
    c2ws, K = orbit_cameras(np.array([1.0, 2.0, 3.0]), 0.5, 64, elevation_deg=20.0, up=(0.0, 0.0, 1.0))
    assert c2ws.shape == (4, 4, 4) and K[0, 2] == 32
    for c2w in c2ws:
        to_centre = np.array([1.0, 2.0, 3.0]) - c2w[:3, 3]
        # Optical axis (+z) through the centre; looking down 20 degrees.
        assert np.allclose(c2w[:3, 2], to_centre / np.linalg.norm(to_centre))
        assert math.isclose(math.degrees(math.asin(-c2w[2, 2])), 20.0)
        # The sphere fits: its angular radius is below half the field of view.
        assert math.asin(0.5 / np.linalg.norm(to_centre)) < math.radians(FOV_DEG / 2)
    # Four azimuths 90 degrees apart.
    axes = c2ws[:, :2, 2] / np.linalg.norm(c2ws[:, :2, 2], axis=1, keepdims=True)
    assert np.allclose(axes @ axes[0], [1, 0, -1, 0], atol=1e-12)


def test_up_from_cameras_is_the_mean_image_up():
    from neus2cli.data.cameras import look_at

    c2w = np.stack([look_at([3 * math.cos(a), 3 * math.sin(a), 1.0], [0, 0, 0], up=(0, 0, 1)) for a in range(6)])
    # Cameras tilted down: each image-up leans inwards, the horizontal parts cancel around the ring.
    up = up_from_cameras(c2w)
    assert np.allclose(up, [0, 0, 1], atol=0.05)


def _renders(n: int, h: int, w: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        gt = rng.random((h, w, 3))
        pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
        out.append({"name": f"view{i}", "pred": pred, "gt": gt, "mask": np.ones((h, w), bool)})
    return out


def test_caption_has_psnr_and_chamfer_when_known():
    lines = preview_caption({"scene": "scan24", "steps": 15000, "train_seconds": 191.0, "psnr_test": 28.413})
    assert lines == ["scan24, 15000 steps in 3m11s", "test PSNR 28.41 dB"]
    text = " ".join(preview_caption({"psnr_test": 28.41, "chamfer": 0.8712, "units": "mm"}))
    assert "PSNR 28.41" in text and "Chamfer 0.8712 mm" in text
    assert preview_caption({}) == ["no held-out views"]


def test_run_preview_is_a_png_of_the_layout_size(tmp_path):
    tile, h, w = 64, 24, 40
    path = write_run_preview(
        tmp_path / "preview.png",
        trimesh.creation.icosphere(subdivisions=2),
        _renders(2, h, w),
        {"scene": "s", "psnr_test": 28.41},
        tile=tile,
    )
    width = 4 * tile + 5 * GAP
    panel_w = (width - 4 * GAP) // 3
    panel_h = round(panel_w * h / w)
    # Caption (2 lines), mesh row, column labels, then per view a label line and the panels.
    height = GAP + 2 * LINE + GAP + tile + GAP + LINE + 2 * (LINE + panel_h + GAP)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (width, height)
        pixels = np.asarray(im.convert("RGB"))
    # The mesh row shows the shaded mesh (grey, not just background).
    row = pixels[GAP + 2 * LINE + GAP : GAP + 2 * LINE + GAP + tile]
    assert (row < 250).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]  # no temporary left behind


def test_empty_mesh_gives_a_preview_with_a_note(tmp_path):
    tile = 64
    path = write_run_preview(tmp_path / "preview.png", trimesh.Trimesh(), [], {}, tile=tile)
    with Image.open(path) as im:
        assert im.size == (4 * tile + 5 * GAP, GAP + LINE + GAP + tile + GAP)
        pixels = np.asarray(im.convert("RGB")).astype(int)
    first_tile = pixels[GAP + LINE + GAP :, GAP : GAP + tile]
    assert (np.abs(first_tile - NOTE_INK).sum(axis=-1) < 60).any()  # the note's ink


def test_mismatched_render_shapes_are_rejected(tmp_path):
    bad = _renders(1, 8, 8)
    bad[0]["gt"] = bad[0]["gt"][:4]
    with pytest.raises(ValueError, match="view0"):
        write_run_preview(tmp_path / "p.png", trimesh.creation.icosphere(subdivisions=1), bad, {})


def test_contact_sheet_layout_labels_and_shared_framing(tmp_path):
    tile = 48
    frames = [
        SheetFrame(i, trimesh.creation.icosphere(subdivisions=2, radius=0.5).apply_translation([0, 0.5 * i, 0]), 30.0)
        for i in range(5)
    ]
    path = write_contact_sheet(tmp_path / "frames.png", frames, tile=tile)
    cols, rows = 3, 2  # ceil(sqrt(5)) columns
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (cols * (tile + GAP) + GAP, GAP + LINE + GAP + rows * (tile + LINE + GAP))
        pixels = np.asarray(im.convert("L"))
    # One framing for all: azimuth 0 looks along +x with z up, so image-right is -y and the sphere
    # moving along +y moves left in the pictures, by the same pixel step from frame to frame.
    centroids = []
    for k in range(5):
        x0, y0 = GAP + (k % cols) * (tile + GAP), GAP + LINE + GAP + (k // cols) * (tile + LINE + GAP)
        cell = pixels[y0 : y0 + tile, x0 : x0 + tile] < 250
        centroids.append(np.nonzero(cell)[1].mean())
    steps = np.diff(centroids)
    # Perspective makes equal world steps nearly equal on screen; 1.5 px covers that and faceting.
    assert np.all(steps < -2) and np.ptp(steps) < 1.5
    assert sheet_caption(frames[3]) == "0003  PSNR 30.00"
    assert sheet_caption(SheetFrame(7, frames[0].mesh)) == "0007"


def test_contact_sheet_subsamples_long_sequences_and_reads_mesh_files(tmp_path):
    picks = pick_frames(100, 48)
    assert len(picks) == 48 and picks[0] == 0 and picks[-1] == 99 and picks == sorted(set(picks))
    assert pick_frames(5, 48) == [0, 1, 2, 3, 4]
    mesh_path = tmp_path / "mesh.ply"
    trimesh.creation.icosphere(subdivisions=1).export(mesh_path)
    frames = [SheetFrame(0, mesh_path, 25.0), SheetFrame(1, trimesh.Trimesh(), None)]
    path = write_contact_sheet(tmp_path / "frames.png", frames, tile=32)
    with Image.open(path) as im:
        assert im.size == (2 * (32 + GAP) + GAP, GAP + LINE + GAP + 32 + LINE + GAP)
