"""Geometry metrics against closed forms (neus2cli.eval.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from neus2cli.errors import UserError
from neus2cli.eval.geometry import (
    Geometry,
    GeometryOptions,
    PointSample,
    check_units,
    compare_samples,
    default_thresholds,
    downsample,
    error_colors,
    evaluate_geometry,
    load_geometry,
    load_scale_mat,
    metrics_from_distances,
    nearest,
    sample_surface,
    sphere_to_world,
    surface_area,
    world_to_sphere,
    write_error_plot,
)

N = 100_000


def icosphere(radius: float, subdivisions: int = 5) -> Geometry:
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return Geometry(points=np.asarray(m.vertices, dtype=np.float64), faces=np.asarray(m.faces))


def square(z: float, x0: float = 0.0, size: float = 1.0) -> Geometry:
    """The square [x0, x0 + size] x [0, size] at height z, two triangles."""
    v = np.array([[x0, 0, z], [x0 + size, 0, z], [x0 + size, size, z], [x0, size, z]], dtype=np.float64)
    return Geometry(points=v, faces=np.array([[0, 1, 2], [0, 2, 3]]))


def chord_depth(sphere: Geometry, radius: float) -> float:
    """How far inside the true sphere the polyhedron reaches: radius - min distance of a face plane.

    Every point of a triangle lies at least as far from the origin as the triangle's plane, so
    each surface point of the icosphere has |p| in [radius - depth, radius].
    """
    tri = sphere.points[sphere.faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return float(radius - np.abs(np.einsum("ij,ij->i", n, tri[:, 0])).min())


def test_concentric_icospheres_closed_form():
    # A small gap keeps the KD-tree fast: a query at distance D from a surface visits the points
    # within ~sqrt(2 D leaf_size) sideways.
    r1, r2 = 1.0, 1.1
    gap = r2 - r1
    s1, s2 = icosphere(r1), icosphere(r2)
    eps1, eps2 = chord_depth(s1, r1), chord_depth(s2, r2)
    assert 0 < max(eps1, eps2) < 1e-3  # subdivision 5: edge ~0.04 r, depth ~ edge^2 / 6 ~ 3e-4 r
    pred, gt = sample_surface(s1, n_points=N, seed=0), sample_surface(s2, n_points=N, seed=1)
    m = compare_samples(pred, gt, [gap - 2 * eps2 - 0.01, gap + 0.01])

    # Lower bound, per point: |p - q| >= |q| - |p| >= (r2 - eps2) - r1.
    # Upper bound, on average: the GT polyhedron along p's direction is within r2 - (r1 - eps1);
    # the nearest *sample* is off sideways by l, adding sqrt(D^2 + l^2) - D <= l^2 / (2 D); for
    # samples of density lam per area, E[l^2] = 1 / (pi lam) (nearest neighbour of a 2D Poisson
    # process). Factor 2 covers curvature and multinomial-vs-Poisson sampling; the mean of 1e5
    # such terms has negligible spread.
    def sampling_term(n_pts: float, radius: float) -> float:
        lam = n_pts / (4 * math.pi * radius**2)
        return 2 / (2 * math.pi * lam * gap)

    assert gap - eps2 <= m.accuracy <= gap + eps1 + sampling_term(N, r2)
    assert gap - eps2 <= m.completeness <= gap + eps1 + sampling_term(N, r1)
    assert gap - eps2 <= m.chamfer <= gap + eps1 + sampling_term(N, r1)
    assert m.chamfer == pytest.approx(0.5 * (m.accuracy + m.completeness), rel=1e-12)

    # Below gap - eps2 no pair is close enough; gap + 0.01 exceeds the worst sideways excess
    # (largest gap between 1e5 samples: pi lam l^2 ~ ln(1e5 * 1e6) -> l ~ 0.05, excess ~ 2.5e-3).
    lo, hi = (f"{t:g}" for t in m.thresholds)
    assert m.precision[lo] == m.recall[lo] == m.fscore[lo] == 0.0
    assert m.precision[hi] == m.recall[hi] == m.fscore[hi] == 1.0

    # Radial normals: a face normal tilts from the radius by at most the face's angular radius
    # (~0.025 rad), the matched points differ in direction by l / r (~0.01 rad): stacking the
    # worst cases, 1 - cos(0.075) < 3e-3.
    assert m.normal_consistency == pytest.approx(1.0, abs=3e-3)
    assert m.n_pred_points == m.n_gt_points == N


def test_mesh_against_itself():
    sphere = icosphere(1.0, subdivisions=4)
    same = sample_surface(sphere, n_points=20_000, seed=3)
    m = compare_samples(same, same, [1e-9])
    # Identical samples: every point's nearest neighbour is itself, at distance exactly 0.
    assert m.accuracy == m.completeness == m.chamfer == 0.0
    assert m.fscore["1e-09"] == 1.0
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-12)


def test_mesh_against_itself_different_seeds_is_sampling_noise():
    sphere = icosphere(1.0, subdivisions=4)
    lam = N / surface_area(sphere)
    # Two independent samples of density lam: the nearest-neighbour distance of a 2D Poisson
    # process has mean 1 / (2 sqrt(lam)) and P(d > t) = exp(-pi lam t^2).
    expected = 1 / (2 * math.sqrt(lam))
    tau = 4 / math.sqrt(lam)  # exp(-16 pi) ~ 1e-22: no point should be farther
    m = evaluate_geometry_from(sphere, sphere, thresholds=[tau])
    assert 0.7 * expected < m.accuracy < 1.3 * expected  # +-30%: curvature and multinomial sampling
    assert 0.7 * expected < m.completeness < 1.3 * expected
    assert m.fscore[f"{tau:g}"] == 1.0


def evaluate_geometry_from(pred: Geometry, gt: Geometry, **opts) -> object:
    """compare_samples with the same sampling as evaluate_geometry (pred seed 0, GT seed 1)."""
    return compare_samples(
        sample_surface(pred, n_points=N, seed=0), sample_surface(gt, n_points=N, seed=1), opts["thresholds"]
    )


def test_plane_offset_gives_the_offset():
    d = 0.05
    m = compare_samples(
        sample_surface(square(d), n_points=N, seed=0), sample_surface(square(0.0), n_points=N, seed=1), [0.1]
    )
    # Distance to the nearest sample of the plane below: sqrt(d^2 + l^2) <= d + l^2 / (2d), with
    # E[l^2] = 1 / (pi lam), lam = N per unit area: 3.2e-5; doubled near the square's edges
    # (half-disc neighbourhoods) -> 1e-4 covers it.
    assert m.accuracy == pytest.approx(d, abs=1e-4)
    assert m.completeness == pytest.approx(d, abs=1e-4)
    # All normals are +-z: |cos| is exactly 1 (up to rounding).
    assert m.normal_consistency == pytest.approx(1.0, abs=1e-12)
    assert m.fscore["0.1"] == 1.0


def test_distance_clip():
    d1, d2, clip = 0.02, 0.06, 0.04
    n = 40_000
    # Two unit squares of equal area, one at height d1 and one at d2 above their GT copies, with
    # exactly n samples each, so each holds half of the points.
    pred = _concat(sample_surface(square(d1), n_points=n, seed=0), sample_surface(square(d2, x0=2), n_points=n, seed=1))
    gt = _concat(sample_surface(square(0), n_points=n, seed=2), sample_surface(square(0, x0=2), n_points=n, seed=3))
    to_gt, to_pred = nearest(pred.points, gt.points)[0], nearest(gt.points, pred.points)[0]
    plain = metrics_from_distances(to_gt, to_pred, [0.04])
    clipped = metrics_from_distances(to_gt, to_pred, [0.04], clip=clip)
    # Sideways sampling term 1 / (2 pi lam d) (see test_plane_offset) for lam = n, d = d1: 2e-4;
    # doubled near the squares' edges.
    tol = 4e-4
    assert plain.accuracy == pytest.approx((d1 + d2) / 2, abs=tol)
    assert plain.completeness == pytest.approx((d1 + d2) / 2, abs=tol)
    assert clipped.accuracy == pytest.approx((d1 + clip) / 2, abs=tol)
    assert clipped.completeness == pytest.approx((d1 + clip) / 2, abs=tol)
    # Clipping does not change which points are within a threshold.
    assert clipped.precision == plain.precision and plain.precision["0.04"] == pytest.approx(0.5)
    # compare_samples with a clip stops the search at the clip: same numbers.
    bounded = compare_samples(pred, gt, [0.04], clip=clip)
    assert bounded.accuracy == pytest.approx(clipped.accuracy, rel=1e-12)
    assert bounded.completeness == pytest.approx(clipped.completeness, rel=1e-12)
    assert bounded.precision == clipped.precision and bounded.recall == clipped.recall
    # A clip below every distance makes the mean exactly the clip.
    assert metrics_from_distances(to_gt, to_pred, [0.04], clip=0.01).accuracy == pytest.approx(0.01, rel=1e-12)
    # DTU-style: distances >= drop_above are left out of the mean but still count as misses.
    dropped = metrics_from_distances(to_gt, to_pred, [0.04], drop_above=0.05)
    assert dropped.accuracy == pytest.approx(d1, abs=tol) and dropped.precision == plain.precision


def _concat(a: PointSample, b: PointSample) -> PointSample:
    return PointSample(np.concatenate([a.points, b.points]), np.concatenate([a.normals, b.normals]))


def test_area_sampling_is_uniform_and_seeded():
    # A mesh of two squares, the second 4x the area: it must get ~4/5 of the points.
    big = square(0.0, x0=5, size=2.0)
    small = square(0.0)
    both = Geometry(np.concatenate([small.points, big.points]), np.concatenate([small.faces, big.faces + 4]))
    s = sample_surface(both, n_points=N, seed=7)
    frac_big = np.mean(s.points[:, 0] >= 5)
    assert frac_big == pytest.approx(0.8, abs=5 * math.sqrt(0.8 * 0.2 / N))  # 5 binomial std
    # Within a square the points are uniform: the mean is the centre (5 std of a uniform mean).
    inside = s.points[s.points[:, 0] < 5]
    assert inside[:, :2].mean(axis=0) == pytest.approx([0.5, 0.5], abs=5 * math.sqrt(1 / 12 / len(inside)))
    np.testing.assert_array_equal(s.points, sample_surface(both, n_points=N, seed=7).points)
    # Density: points per unit area (total area 5).
    assert len(sample_surface(both, density=1000.0)) == 5000


def test_crop_restricts_both_sides(tmp_path):
    gt_mesh = square(0.0)
    # The prediction has the GT square plus a far-off wrong square, which the crop removes.
    wrong = square(0.5, x0=3)
    pred_mesh = Geometry(
        np.concatenate([gt_mesh.points, wrong.points]), np.concatenate([gt_mesh.faces, wrong.faces + 4])
    )
    pred_path, gt_path = _write(tmp_path / "pred.ply", pred_mesh), _write(tmp_path / "gt.ply", gt_mesh)
    full = evaluate_geometry(pred_path, gt_path, GeometryOptions(n_points=N, thresholds=[0.05]))
    crop = evaluate_geometry(
        pred_path,
        gt_path,
        GeometryOptions(n_points=N, thresholds=[0.05], crop=[[-0.1, -0.1, -1], [1.1, 1.1, 1]]),
    )
    assert full.precision["0.05"] == pytest.approx(0.5, abs=0.01)  # half the area is wrong
    assert crop.precision["0.05"] == 1.0
    assert crop.n_pred_points == pytest.approx(N / 2, rel=0.02)


def test_scale_mat_round_trip_and_world_evaluation(tmp_path):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    scale_mat = np.eye(4)
    scale_mat[:3, :3] = 150.0 * q  # NeuS: unit sphere -> object's bounding sphere (a similarity)
    scale_mat[:3, 3] = [10.0, -200.0, 700.0]
    np.savez(tmp_path / "cameras_sphere.npz", scale_mat_0=scale_mat, world_mat_0=np.eye(4))
    loaded = load_scale_mat(tmp_path / "cameras_sphere.npz")
    np.testing.assert_array_equal(loaded, scale_mat)

    x = rng.uniform(-1, 1, size=(1000, 3))
    world = sphere_to_world(x, loaded)
    np.testing.assert_allclose(world, x @ scale_mat[:3, :3].T + scale_mat[:3, 3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(world_to_sphere(world, loaded), x, rtol=0, atol=1e-12)

    # A mesh saved in the unit-sphere frame, evaluated with --scale-mat, scores like the same
    # mesh saved in world units (same seed: the same faces and barycentric points are drawn).
    sphere = icosphere(0.8, subdivisions=3)
    gt_world = Geometry(sphere_to_world(icosphere(0.82, subdivisions=3).points, scale_mat), sphere.faces)
    opts = dict(n_points=20_000, thresholds=[1.0])
    normalized = evaluate_geometry(
        _write(tmp_path / "pred_sphere.ply", sphere),
        _write(tmp_path / "gt.ply", gt_world),
        GeometryOptions(scale_mat=tmp_path / "cameras_sphere.npz", **opts),
    )
    in_world = evaluate_geometry(
        _write(tmp_path / "pred_world.ply", sphere.transformed(scale_mat)),
        tmp_path / "gt.ply",
        GeometryOptions(**opts),
    )
    # PLY stores float32 vertices: ~1e-7 relative on coordinates of ~800 mm.
    assert normalized.accuracy == pytest.approx(in_world.accuracy, rel=1e-4)
    # The radius gap is 0.02 unit-sphere units = 3 mm; subdivision-3 chords reach ~0.004 r inside
    # and sparse samples (0.1 per mm^2) add up to 2 / (2 pi lam D) = 1 mm (test_concentric_icospheres).
    assert 3.0 - 0.004 * 0.82 * 150 <= normalized.accuracy <= 3.0 + 0.004 * 0.8 * 150 + 1.0


def test_scale_mat_of_the_dtu_scene(dtu_scan24):
    mat = load_scale_mat(dtu_scan24 / "cameras_sphere.npz")
    x = np.random.default_rng(1).uniform(-1, 1, size=(100, 3))
    np.testing.assert_allclose(world_to_sphere(sphere_to_world(x, mat), mat), x, atol=1e-9)
    # scale_mat_0 maps the unit sphere to DTU millimetres: a radius of a few hundred mm.
    assert 50 < abs(np.linalg.det(mat[:3, :3])) ** (1 / 3) < 1000


def test_bad_scale_mat(tmp_path):
    np.savez(tmp_path / "cams.npz", world_mat_0=np.eye(4))
    with pytest.raises(UserError, match="scale_mat_0"):
        load_scale_mat(tmp_path / "cams.npz")
    np.savez(tmp_path / "sing.npz", scale_mat_0=np.zeros((4, 4)))
    with pytest.raises(UserError, match="invertible"):
        load_scale_mat(tmp_path / "sing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(UserError, match="could not read"):
        load_scale_mat(tmp_path / "junk.npz")


def test_greedy_radius_downsampling_matches_sequential_rule():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(3000, 3))
    r = 0.08
    kept = downsample(PointSample(pts), r, method="radius", seed=5).points
    # The sequential definition, written plainly: in the same random order, keep a point unless
    # a kept point lies within r.
    order = np.random.default_rng(5).permutation(len(pts))
    tree, removed, keep = cKDTree(pts), np.zeros(len(pts), bool), []
    for i in order:
        if not removed[i]:
            keep.append(i)
            removed[tree.query_ball_point(pts[i], r)] = True
    np.testing.assert_array_equal(kept, pts[np.sort(keep)])
    # Kept points are more than r apart, and every point is within r of a kept one.
    assert len(cKDTree(kept).query_pairs(r)) == 0
    assert cKDTree(kept).query(pts)[0].max() <= r


def test_voxel_downsampling_one_point_per_voxel():
    pts = np.random.default_rng(0).uniform(0, 1, size=(20_000, 3))
    s = 0.1
    kept = downsample(PointSample(pts, pts.copy()), s, method="voxel").points
    cells = np.floor((kept - pts.min(axis=0)) / s).astype(int)
    occupied = np.unique(np.floor((pts - pts.min(axis=0)) / s).astype(int), axis=0)
    assert len(np.unique(cells, axis=0)) == len(kept) == len(occupied)


def test_loading_point_clouds_and_normals(tmp_path):
    pts = np.random.default_rng(0).uniform(-1, 1, size=(50, 3))
    nrm = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    np.save(tmp_path / "p.npy", pts)
    np.savetxt(tmp_path / "p.xyz", np.hstack([pts, nrm]))
    header = "ply\nformat ascii 1.0\nelement vertex 50\n" + "".join(
        f"property float {c}\n" for c in ("x", "y", "z", "nx", "ny", "nz")
    )
    body = "".join(" ".join(f"{v:.7f}" for v in row) + "\n" for row in np.hstack([pts, nrm]))
    (tmp_path / "p.ply").write_text(header + "end_header\n" + body)

    g = load_geometry(tmp_path / "p.npy")
    assert not g.is_mesh and g.normals is None
    np.testing.assert_array_equal(g.points, pts)
    for name in ("p.xyz", "p.ply"):
        g = load_geometry(tmp_path / name)
        assert not g.is_mesh
        np.testing.assert_allclose(g.points, pts, atol=1e-6)  # text with 7 decimals / float32
        np.testing.assert_allclose(g.normals, nrm, atol=1e-6)
    # A point cloud is used as it is by sample_surface.
    np.testing.assert_array_equal(sample_surface(load_geometry(tmp_path / "p.npy"), n_points=7).points, pts)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("garbage that is not a mesh", "could not read"),
        (
            "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
            "element face 0\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n",
            "no faces",
        ),
        (
            "ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
            "property float z\nend_header\n",
            "no points",
        ),
    ],
)
def test_load_errors(tmp_path, content, match):
    path = tmp_path / "m.ply"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=match):
        load_geometry(path)


def test_unit_check():
    unit = icosphere(1.0, subdivisions=2).points
    check_units(unit, unit * 5)  # 5x: allowed
    with pytest.raises(UserError, match="--scale-mat"):
        check_units(unit, unit * 200)
    with pytest.raises(UserError, match="do not overlap"):
        check_units(unit, unit + [10.0, 0, 0])


def test_default_threshold_is_one_percent_of_the_gt_diagonal():
    cube = np.array([[0, 0, 0], [1, 1, 1]], dtype=np.float64)
    assert default_thresholds(cube) == [0.017]  # 0.01 * sqrt(3) = 0.01732 -> two digits


def test_error_plot(tmp_path):
    pred = icosphere(1.0, subdivisions=2)
    gt_points = sample_surface(icosphere(1.0, subdivisions=5), n_points=50_000, seed=0).points
    write_error_plot(pred, gt_points, tmp_path / "plot.ply", vmax=0.1)
    far = Geometry(pred.points * 1.5, pred.faces)
    write_error_plot(far, gt_points, tmp_path / "far.ply", vmax=0.1)
    near = trimesh.load(tmp_path / "plot.ply", process=False)
    red = trimesh.load(tmp_path / "far.ply", process=False)
    assert len(near.faces) == len(pred.faces)
    # On the surface (distance ~ sample spacing << vmax): close to the "0" colour, blue.
    assert np.all(near.visual.vertex_colors[:, 2] > 150) and np.all(near.visual.vertex_colors[:, 0] < 100)
    # 0.5 away with vmax 0.1: clipped to the top colour.
    np.testing.assert_array_equal(
        red.visual.vertex_colors, np.tile(error_colors(np.array([1.0]), 0.1), (len(far.points), 1))
    )


def _write(path, geometry: Geometry):
    trimesh.Trimesh(geometry.points, geometry.faces, process=False).export(path)
    return path
