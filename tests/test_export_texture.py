"""Textured export: UV atlas (xatlas), texture baked from the colour function, OBJ/GLB that load back."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from neus2cli.data.scene import Normalization
from neus2cli.export.mesh import extract_mesh
from tests.test_data_convert import run_cli

# A colour field with known slope: c_k(x) = 0.5 + 0.45 sin(w_k . (x - 0.5)) per channel k, so its
# gradient along any direction is at most LIPSCHITZ = 0.45 max_k |w_k| per normalized unit.
FREQ = torch.tensor([[6.0, 0.0, 0.0], [0.0, 5.0, 2.0], [-3.0, 0.0, 5.0]])
LIPSCHITZ = 0.45 * float(FREQ.norm(dim=1).max())
NORM = Normalization(scale=0.5, offset=np.array([0.5, 0.4, 0.5]))


def wavy_color(x: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.45 * torch.sin((x - 0.5) @ FREQ.T)


def sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5).norm(dim=-1) - 0.3


def texel_length(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int) -> float:
    """Surface length of one texel: sqrt(surface area / atlas area in texels), vertices in normalized units.

    xatlas packs at a uniform texel density (per-face ratios within ~2 % of this here, measured),
    so one number describes the whole atlas.
    """
    p = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1).sum()
    t = uv[faces] * size
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    return float(np.sqrt(area / (0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum())))


def texture_of(mesh: trimesh.Trimesh):
    material = mesh.visual.material
    return material.baseColorTexture if hasattr(material, "baseColorTexture") else material.image


def test_baked_texture_matches_the_colour_function_at_every_vertex(tmp_path):
    pytest.importorskip("xatlas")
    from neus2cli.export.texture import bake_texture, sample_texture, save_textured_mesh, textured_mesh

    size = 256
    mesh = extract_mesh(sphere_sdf, NORM, resolution=40, color_fn=wavy_color)  # world frame, vertex colours
    normalized = NORM.world_to_normalized(np.asarray(mesh.vertices))
    baked = bake_texture(normalized, mesh.faces, wavy_color, size=size)
    atlas = baked.atlas
    assert atlas.faces.shape == mesh.faces.shape and baked.image.shape == (size, size, 3)
    # Same triangles, seams cut: the atlas mesh is the input mesh with some vertices duplicated.
    np.testing.assert_array_equal(atlas.vmapping[atlas.faces], mesh.faces)

    ell = texel_length(normalized[atlas.vmapping], atlas.faces, atlas.uv, size)
    # Bound on |texture(uv_v) - colour(v)|: a bilinear (or nearest) read at a vertex's UV takes texels
    # whose centres lie within sqrt(2) texels of it; each holds the colour of a surface point within
    # one texel of its centre (its own centre inside a triangle, the nearest point of a triangle, or
    # for dilated texels the nearest such texel): 2.5 texels of surface in all, times the colour's
    # slope, plus 8-bit rounding (0.5/255 in the texture, 0.5/255 in vertex colours). Measured: 0.5
    # texels' worth for bilinear reads, 1.3 for trimesh's nearest-texel reads.
    tol = LIPSCHITZ * 2.5 * ell + 1.0 / 255
    truth = wavy_color(torch.as_tensor(normalized[atlas.vmapping], dtype=torch.float32)).numpy()
    bilinear = sample_texture(baked.image, atlas.uv) / 255
    assert np.abs(bilinear - truth).max() < tol, (np.abs(bilinear - truth).max(), tol)
    vertex_colors = np.asarray(mesh.visual.vertex_colors)[atlas.vmapping, :3] / 255
    assert np.abs(bilinear - vertex_colors).max() < tol

    paths = save_textured_mesh(textured_mesh(mesh.vertices, baked), tmp_path / "sphere")
    assert {p.name for p in paths.values()} == {"sphere.obj", "sphere.mtl", "sphere_texture.png", "sphere.glb"}
    assert "map_Kd sphere_texture.png" in paths["mtl"].read_text()
    for kind in ("obj", "glb"):
        loaded = trimesh.load(paths[kind], force="mesh", process=False)
        image = texture_of(loaded)
        assert image is not None and image.size == (size, size), kind
        uv = np.asarray(loaded.visual.uv)
        assert uv.shape == (len(loaded.vertices), 2) and uv.min() >= 0 and uv.max() <= 1, kind
        assert len(loaded.faces) == len(mesh.faces)
        # World frame kept: every vertex is one of the PLY's vertices.
        dist, index = cKDTree(mesh.vertices).query(loaded.vertices)
        assert dist.max() < 1e-6, kind
        # trimesh's own sampler (nearest texel, its own v flip): checks the file's UV convention.
        sampled = trimesh.visual.color.uv_to_color(uv, image)[:, :3] / 255
        expect = wavy_color(torch.as_tensor(NORM.world_to_normalized(loaded.vertices), dtype=torch.float32)).numpy()
        assert np.abs(sampled - expect).max() < tol, (kind, np.abs(sampled - expect).max(), tol)
    glb = trimesh.load(paths["glb"], force="mesh", process=False).visual.material
    assert glb.metallicFactor == 0.0  # glTF's default metallic 1 would show the texture as a dark mirror


def test_dilation_fills_texels_beside_charts():
    from neus2cli.export.texture import dilate

    covered = np.zeros((8, 8), dtype=bool)
    covered[2:4, 2:4] = True
    image = np.zeros((8, 8, 3))
    image[2:4, 2:4] = 0.75
    out = dilate(image, covered, distance=2)
    # Within 2 texels (Euclidean, centre to centre) of the block: filled; farther: untouched.
    assert np.all(out[0, 2:4] == 0.75) and np.all(out[2:4, 5] == 0.75) and np.all(out[1, 1] == 0.75)
    assert np.all(out[0, 0] == 0) and np.all(out[6:, :] == 0) and np.all(out[:, 6:] == 0)


def test_missing_xatlas_is_a_one_paragraph_error(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_xatlas(name, *args, **kwargs):
        if name == "xatlas":
            raise ImportError("No module named 'xatlas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_xatlas)
    # Checked before the checkpoint is even read: the missing extra is the first thing the user hears.
    code = run_cli(["export-mesh", str(tmp_path / "run"), "--textured", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2
    assert "neus2cli[texture]" in err and "xatlas" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_textured_is_refused_with_no_color(tmp_path, capsys):
    code = run_cli(["export-mesh", str(tmp_path), "--textured", "--no-color"])
    assert code == 2 and "--no-color" in capsys.readouterr().err


# ----------------------------------------------------------------------------- trained fields, CLI
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("xatlas")  # before training: its only user needs it
    from neus2cli.config import resolve_config
    from neus2cli.train.static import train_static
    from tests.scenes import static_scene

    scene = static_scene(tmp_path_factory.mktemp("scene") / "lumpy", views=8, size=32)
    torch.manual_seed(0)
    cfg = resolve_config(
        "fast",
        ["backend=torch", "sampling.grid_resolution=32", "output.mesh_resolution=24", "output.render_test_views=0"],
        **{"train.steps": 10},
    )
    run_dir, _ = train_static(scene, cfg, tmp_path_factory.mktemp("runs") / "run", progress=False)
    return run_dir


def _check_texture_against_ply(
    paths: dict, normalization: Normalization, canonical_from_world: np.ndarray | None = None
) -> None:
    """The OBJ/GLB's texture at each vertex's UV against the PLY's colour of that vertex.

    ``canonical_from_world`` (4, 4) maps the files' world to the field's frame (dynamic frames).
    The colour network's slope is unknown here, so it is measured on the PLY itself: the largest
    colour change per unit length over its edges (normalized units); the bound is then the one of
    the analytic test above (2.5 texels of surface plus rounding) with that slope, doubled because
    edges sample the slope only between vertices.
    """

    def normalized(vertices: np.ndarray) -> np.ndarray:
        v = np.asarray(vertices, dtype=np.float64)
        if canonical_from_world is not None:
            v = trimesh.transform_points(v, canonical_from_world)
        return normalization.world_to_normalized(v)

    ply = trimesh.load(paths["ply"], process=False)
    colors = np.asarray(ply.visual.vertex_colors)[:, :3] / 255
    x = normalized(ply.vertices)
    a, b = ply.edges_unique.T
    slope = float((np.abs(colors[a] - colors[b]).max(1) / np.linalg.norm(x[a] - x[b], axis=1)).max())
    for kind in ("obj", "glb"):
        mesh = trimesh.load(paths[kind], force="mesh", process=False)
        image = texture_of(mesh)
        dist, index = cKDTree(ply.vertices).query(mesh.vertices)
        assert dist.max() < 1e-5, kind  # the PLY's vertices (same world frame, frame transform applied alike)
        uv = np.asarray(mesh.visual.uv)
        assert uv.min() >= 0 and uv.max() <= 1
        ell = texel_length(normalized(mesh.vertices), mesh.faces, uv, image.size[0])
        tol = 2 * slope * 2.5 * ell + 1.0 / 255
        err = np.abs(trimesh.visual.color.uv_to_color(uv, image)[:, :3] / 255 - colors[index]).max(1)
        print(f"{kind}: texture vs vertex colours max {err.max():.4f}, bound {tol:.4f}")
        assert err.max() < tol, (kind, err.max(), tol)


@pytest.mark.slow
def test_export_mesh_textured_on_a_static_run(tiny_run, tmp_path, capsys):
    pytest.importorskip("xatlas")
    from neus2cli.train.checkpoint import load_checkpoint

    args = ["export-mesh", str(tiny_run), "--textured", "--texture-size", "128", "-r", "32", "--backend", "torch"]
    assert run_cli([*args, "--out", str(tmp_path / "m.obj")]) == 0
    out = capsys.readouterr().out
    names = ("m.ply", "m.obj", "m.mtl", "m_texture.png", "m.glb")
    assert all((tmp_path / n).is_file() and n in out for n in names), out
    paths = {p.suffix.lstrip("."): p for p in (tmp_path / n for n in names)}
    norm = Normalization.from_dict(load_checkpoint(tiny_run)["normalization"])
    _check_texture_against_ply(paths, norm)


@pytest.mark.slow
def test_export_textured_for_a_dynamic_frame(tmp_path):
    pytest.importorskip("xatlas")
    from neus2cli.compute import Compute
    from neus2cli.config import resolve_config
    from neus2cli.train.dynamic import train_dynamic
    from neus2cli.train.frames import field_for_frame
    from neus2cli.train.run_mesh import export_run_textured_mesh
    from tests.scenes import dynamic_scene

    seq = dynamic_scene(tmp_path / "seq", frames=2, views=8, size=32)
    torch.manual_seed(0)
    tiny = [
        "backend=torch",
        "sampling.grid_resolution=32",
        "first_frame_steps=8",
        "next_frame_steps=6",
        "global_movement_steps=2",
        "output.mesh_resolution=24",
        "sampling.target_samples=2048",
    ]
    run_dir, _ = train_dynamic(seq, resolve_config("fast", tiny), tmp_path / "run", progress=False)
    paths = export_run_textured_mesh(run_dir, frame=1, resolution=32, texture_size=128, compute=Compute.cpu())
    assert paths["obj"] == run_dir / "frames" / "0001" / "mesh_32.obj"
    _, norm, world_from_canonical = field_for_frame(run_dir, 1, Compute.cpu())
    _check_texture_against_ply(paths, norm, np.linalg.inv(world_from_canonical))
    # In frame 1's world, like the mesh that training wrote for that frame (24^3 lattice: centroids
    # agree to a fraction of its cell, 1/23 of the unit cube = 1/23/scale world units).
    trained = trimesh.load(run_dir / "frames" / "0001" / "mesh.ply")
    ours = trimesh.load(paths["glb"], force="mesh")
    assert np.linalg.norm(ours.vertices.mean(0) - trained.vertices.mean(0)) < 0.5 / 23 / norm.scale


@pytest.mark.slow
def test_textured_mesh_renders_like_the_network_at_a_test_view(tmp_path):
    """The exported OBJ (UVs + texture), rasterized at a held-out view (``export.raster``), against the
    network's volume rendering of that view, over the pixels where both see solid surface.

    Bound, 25 dB (RMS 5.6% of full scale): the texture holds the colour seen along the normal at the
    mesh's surface points, the rendering the colour seen along the ray, averaged over the band of
    samples around the surface. The scene is Lambertian under a light fixed in the world, so the true
    colour is view-independent and what remains is the trained network's own view dependence, the
    band's blur and the texture's sampling: measured 29.0 dB (150 CPU steps, 64^3 lattice, 256^2
    texture; 28.8 dB with a 512^2 texture, so the texels are not the limit). Silhouette pixels are left
    out (opacity < 0.99): there the mesh's hard edge and the soft rendered one differ by design. A
    texture looked up with v unflipped (OBJ's v points up) scores 17.1 dB: the bound tells them apart.
    """
    pytest.importorskip("xatlas")
    from neus2cli.compute import Compute
    from neus2cli.config import resolve_config
    from neus2cli.data.loader import load_scene
    from neus2cli.eval.images import psnr
    from neus2cli.export.raster import rasterize
    from neus2cli.export.texture import sample_texture
    from neus2cli.render.renderer import render_image_rays
    from neus2cli.train.checkpoint import field_from_checkpoint, load_checkpoint
    from neus2cli.train.pixels import view_rays
    from neus2cli.train.run_mesh import export_run_textured_mesh
    from neus2cli.train.static import train_static
    from tests.scenes import static_scene

    scene = static_scene(tmp_path / "lumpy", views=12, size=48)
    torch.manual_seed(0)
    sets = ["backend=torch", "sampling.grid_resolution=32", "output.mesh_resolution=24", "output.render_test_views=0"]
    # 150 steps: the first at which the surface is sharp enough that rays reach opacity 0.99 (100 do not).
    run_dir, _ = train_static(
        scene, resolve_config("fast", sets, **{"train.steps": 150}), tmp_path / "run", progress=False
    )
    paths = export_run_textured_mesh(run_dir, resolution=64, texture_size=256, compute=Compute.cpu())
    mesh = trimesh.load(paths["obj"], force="mesh", process=False)
    image = np.asarray(texture_of(mesh).convert("RGB"))
    view = load_scene(scene).test_views[0]
    raster = rasterize(mesh.vertices, mesh.faces, view.c2w, view.K, view.width, view.height)
    corners = np.asarray(mesh.visual.uv)[mesh.faces[raster.face[raster.mask]]]
    uv = np.einsum("nk,nkc->nc", raster.bary[raster.mask], corners)

    ckpt = load_checkpoint(run_dir)
    field = field_from_checkpoint(ckpt, Compute.cpu())
    rays_o, rays_d = view_rays(view, Normalization.from_dict(ckpt["normalization"]), "cpu")
    s = field.cfg.sampling
    out = render_image_rays(
        field.model, field.grid, rays_o, rays_d, step_size=s.step_size, bg_color=torch.ones(3), impl="torch",
        chunk=4096, early_stop_eps=s.early_stop_eps,
    )  # fmt: skip
    network = out["rgb"].reshape(view.height, view.width, 3).numpy()
    solid_in_mesh = out["opacity"].reshape(view.height, view.width).numpy()[raster.mask] > 0.99
    assert solid_in_mesh.sum() > 300  # most of the object's ~780 pixels
    target = network[raster.mask][solid_in_mesh]
    ours = psnr((sample_texture(image, uv) / 255)[solid_in_mesh][None], target[None])
    wrong = psnr((sample_texture(image, uv * [1, -1] + [0, 1]) / 255)[solid_in_mesh][None], target[None])
    print(f"textured mesh vs network: {ours:.2f} dB over {solid_in_mesh.sum()} pixels (v unflipped: {wrong:.2f} dB)")
    assert ours > 25.0 and wrong < 20.0
