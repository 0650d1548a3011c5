"""The masks' visual hull locates the object before training; dynamic runs centre on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from neus2cli.data.hull import MIN_SEEN_FRACTION, carve_hull, centred_normalization, visual_hull_box
from neus2cli.data.images import load_images
from neus2cli.data.loader import load_dynamic_scene
from neus2cli.data.scene import Normalization, View
from tests.scenes import dynamic_scene


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return dynamic_scene(tmp_path_factory.mktemp("hull") / "seq", frames=3, views=12, size=64)


def _true_box(sequence, frame: int, normalization: Normalization) -> np.ndarray:
    mesh = trimesh.load(sequence / "gt" / f"mesh_{frame:04d}.ply")
    v = normalization.world_to_normalized(np.asarray(mesh.vertices))
    return np.stack([v.min(axis=0), v.max(axis=0)])


def test_hull_box_contains_the_object_and_is_tight(sequence):
    scene = load_dynamic_scene(sequence).frames[2]
    images = load_images(scene.train_views, progress=False)
    box = visual_hull_box(scene.train_views, images, scene.normalization, resolution=64)
    truth = _true_box(sequence, 2, scene.normalization)
    cell = 1.0 / 63
    # A hull contains the object, up to the lattice spacing and a pixel of the 64 px masks ...
    assert np.all(box[0] <= truth[0] + 2 * cell) and np.all(box[1] >= truth[1] - 2 * cell), (box, truth)
    # ... and with 12 views around it, it is not much larger: its centre is the object's.
    size = truth[1] - truth[0]
    assert np.all(np.abs(box.mean(axis=0) - truth.mean(axis=0)) < 0.1 * size.max()), (box, truth)
    assert np.all(box[1] - box[0] < 1.5 * size + 2 * cell)


def test_hull_box_is_none_without_masks(sequence):
    scene = load_dynamic_scene(sequence).frames[0]
    images = [img.copy() for img in load_images(scene.train_views, progress=False)]
    for img in images:
        img[..., 3] = 255
    assert visual_hull_box(scene.train_views, images, scene.normalization) is None


def test_centred_normalization_keeps_scale_and_centres_the_box():
    n = Normalization(scale=0.2, offset=np.array([0.4, 0.5, 0.6]))
    box = np.array([[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]])
    c = centred_normalization(n, box)
    assert c.scale == n.scale
    centre_world = n.normalized_to_world(box.mean(axis=0))
    np.testing.assert_allclose(c.world_to_normalized(centre_world), [0.5, 0.5, 0.5], atol=1e-12)


def test_sequence_normalization_leaves_first_object_off_centre_and_centring_fixes_it(sequence):
    # The generated sequence's normalization spans the whole motion: frame 0's object is off-centre.
    seq = load_dynamic_scene(sequence)
    scene = seq.frames[0]
    truth = _true_box(sequence, 0, scene.normalization)
    assert np.abs(truth.mean(axis=0) - 0.5).max() > 0.05
    box = visual_hull_box(scene.train_views, load_images(scene.train_views, progress=False), scene.normalization)
    centred = centred_normalization(scene.normalization, box)
    moved = _true_box(sequence, 0, centred)
    assert np.abs(moved.mean(axis=0) - 0.5).max() < 0.03
    json.dumps(centred.to_dict())  # what run.json stores


def _ring_view(i: int, n: int, focal: float) -> View:
    """A 64 px OpenCV camera on a ring of radius 3 around the origin, looking at it."""
    angle = 2 * np.pi * i / n
    centre = np.array([3 * np.cos(angle), 3 * np.sin(angle), 0.0])
    forward = -centre / np.linalg.norm(centre)
    down = np.array([0.0, 0.0, -1.0])
    right = np.cross(down, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = centre
    K = np.array([[focal, 0, 32], [0, focal, 32], [0, 0, 1.0]])
    return View(f"v{i}", None, 64, 64, K, c2w)


def test_a_view_that_does_not_see_a_point_does_not_carve_it():
    # 12 views whose masks are all foreground; view 0 is zoomed in (4x focal), so a point 0.9 off the
    # axis lies outside its image. Only views that see a point may carve it: it stays.
    n = 12
    views = [_ring_view(i, n, 256.0 if i == 0 else 64.0) for i in range(n)]
    all_foreground = [lambda uv: torch.ones(uv.shape[0], dtype=torch.bool)] * n
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.9]], dtype=torch.float64)
    assert carve_hull(points, views, all_foreground).tolist() == [True, True]

    # The same point with view 3's mask saying background there: a view that sees it carves it.
    def background_above(uv):
        return uv[:, 1] > 16  # the top 16 rows (the +z side) are background

    lookups = list(all_foreground)
    lookups[3] = background_above
    assert carve_hull(points, views, lookups).tolist() == [True, False]


def test_a_point_that_few_views_see_is_not_content():
    # Cameras on one side (a cap, as in DTU): a point that fewer than MIN_SEEN_FRACTION of them see
    # is unknown, not content, although no mask carves it.
    n = 10
    views = [_ring_view(i, 40, 64.0) for i in range(n)]  # 10 of 40 ring positions: a 90-degree arc
    all_foreground = [lambda uv: torch.ones(uv.shape[0], dtype=torch.bool)] * n
    # Behind view 0's neighbours, near view 0: in front of only the cameras it is not behind.
    near_cam0 = torch.tensor([[2.5, 0.0, 0.0]], dtype=torch.float64)
    centre = torch.zeros(1, 3, dtype=torch.float64)
    assert carve_hull(centre, views, all_foreground).tolist() == [True]
    assert not carve_hull(near_cam0, views, all_foreground).item()
    assert 0.5 < MIN_SEEN_FRACTION < 1.0  # neither every view (the old rule) nor any single one
