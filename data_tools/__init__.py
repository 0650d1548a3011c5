"""Synthetic scenes with known geometry: render meshes from known cameras.

* ``data_tools.render_mesh``: CPU ray-casting renderer (RGBA, depth, normals).
* ``data_tools.camera_paths``: Fibonacci-sphere and ring camera layouts (OpenCV c2w).
* ``data_tools.generate``: static scenes (NeuS2 or Blender JSON, ground-truth mesh).
* ``data_tools.dynamic``: moving / deforming sequences (NeuS2 per-frame JSONs, ground truth).
* ``data_tools.colmap``: COLMAP sparse-model writers, and a static scene -> COLMAP scene folder.

Command line: ``python -m data_tools static MESH OUT``, ``python -m data_tools dynamic MESH OUT`` and
``python -m data_tools to-colmap SCENE OUT``.
This package sits beside ``neus2cli`` (a development tool); it only uses ``neus2cli.data``
and ``neus2cli.errors``.
"""

from __future__ import annotations

from pathlib import Path


def demo_scene_path() -> Path:
    """The bundled demo scene: Keenan Crane's CC0 'spot' cow, 40 train + 8 test views, 128x128,
    NeuS2 JSON (``transform_train.json`` / ``transform_test.json``), with ``gt_mesh.ply``."""
    return Path(__file__).resolve().parent / "demo_scene"
