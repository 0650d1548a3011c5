"""Dynamic training end to end on the CPU: large rigid motion recovered, per-frame mode, resume, deltas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from neus2cli.compute import Compute
from neus2cli.config import resolve_config
from neus2cli.train.dynamic import DynamicRun, train_dynamic
from neus2cli.train.rigid import rotation_angle_deg
from neus2cli.train.trainer import TrainingInterrupted
from tests.scenes import dynamic_scene

CPU_SETTINGS = ["backend=torch", "sampling.grid_resolution=32"]


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    # 128 px: at 64 px one pixel at the object's rim is ~2 degrees of rotation, the tolerance itself.
    return dynamic_scene(tmp_path_factory.mktemp("seq") / "lumpy", frames=3, views=20, size=128)


@pytest.fixture(scope="module")
def incremental(sequence, tmp_path_factory):
    torch.manual_seed(0)
    # 200 pose-only steps instead of the default 100: with the CPU's ~1.5k rays per batch the pose
    # estimate needs more batches to average out (100 steps landed between 1.5 and 3.6 degrees).
    cfg = resolve_config(
        "fast", [*CPU_SETTINGS, "first_frame_steps=500", "next_frame_steps=250", "global_movement_steps=200"]
    )
    return train_dynamic(sequence, cfg, tmp_path_factory.mktemp("runs") / "inc", progress=False)


@pytest.mark.slow
def test_large_rigid_motion_is_recovered(incremental, sequence):
    run_dir, metrics = incremental
    motion = json.loads((sequence / "gt" / "motion.json").read_text())
    object_size = 2 * motion["object_radius"]
    for item in motion["frames"]:
        k = item["index"]
        w2c = np.asarray(
            json.loads((run_dir / "frames" / f"{k:04d}" / "transform.json").read_text())["world_to_canonical"]
        )
        truth = np.linalg.inv(np.asarray(item["world_from_canonical"]))
        rot_err = rotation_angle_deg(w2c[:3, :3] @ truth[:3, :3].T)
        # Translation is judged where the object is (its centroid in frame k): at a far-away origin a
        # rotation error alone would show up as translation.
        centre = trimesh.load(sequence / "gt" / f"mesh_{k:04d}.ply").vertices.mean(axis=0)
        trans_err = np.linalg.norm((w2c[:3, :3] - truth[:3, :3]) @ centre + w2c[:3, 3] - truth[:3, 3]) / object_size
        # The issue asks for < 2 degrees and < 2 % after 20 degrees and a fifth of the object per frame.
        # Rotating each frame's delta about the object (not the cube centre) steadied the estimate:
        # 0.46-1.19 degrees over four CPU runs (it was 0.45-2.1 about the cube centre).
        print(f"frame {k}: rotation error {rot_err:.2f} deg, translation error {100 * trans_err:.2f} %")
        assert rot_err < 2.0, (k, rot_err)
        assert trans_err < 0.02, (k, trans_err)
    assert [f["index"] for f in metrics["frames"]] == [0, 1, 2]
    assert all(f["retries"] == 0 for f in metrics["frames"])


@pytest.mark.slow
def test_each_frame_mesh_is_close_to_its_truth(incremental, sequence):
    from bench.common import chamfer_fraction

    run_dir, _ = incremental
    for k in range(3):
        q = chamfer_fraction(
            run_dir / "frames" / f"{k:04d}" / "mesh.ply", sequence / "gt" / f"mesh_{k:04d}.ply", 1.0, n_points=20_000
        )
        # One export cell (96^3 lattice, radius -> 0.45) is 2.3 % of the radius; frames after the first train
        # 150 steps only, so allow two cells.
        assert q["chamfer_fraction_of_radius"] < 0.05, (k, q)


@pytest.mark.slow
def test_output_contract_and_frame_rebuild(incremental, tmp_path):
    from neus2cli.train.run_mesh import export_run_mesh

    run_dir, metrics = incremental
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert [f["index"] for f in saved["frames"]] == [0, 1, 2] and all(f["seconds"] > 0 for f in saved["frames"])
    for k in range(3):
        fdir = run_dir / "frames" / f"{k:04d}"
        assert (fdir / "mesh.ply").is_file() and (fdir / "field.bin").is_file()
        assert np.asarray(json.loads((fdir / "transform.json").read_text())["world_to_canonical"]).shape == (4, 4)
    # The contact sheet of the frames: a valid PNG.
    from PIL import Image

    with Image.open(run_dir / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and min(sheet.size) > 100
    # Later frames are deltas against the previous one and cost much less than the first.
    assert saved["frames"][2]["stored_bytes"] < 0.5 * saved["frames"][0]["stored_bytes"]
    # Frame 2 rebuilt from frame 0 + two deltas gives the mesh that training wrote (same lattice size).
    cfg = json.loads((run_dir / "config.json").read_text())
    out = export_run_mesh(
        run_dir,
        frame=2,
        resolution=cfg["output"]["mesh_resolution"],
        out=tmp_path / "f2.ply",
        compute=Compute.cpu(),
        min_component_fraction=cfg["output"]["remove_floaters"],
    )
    rebuilt, stored = trimesh.load(out), trimesh.load(run_dir / "frames" / "0002" / "mesh.ply")
    assert len(rebuilt.faces) == len(stored.faces)
    np.testing.assert_allclose(np.sort(rebuilt.vertices, axis=0), np.sort(stored.vertices, axis=0), atol=1e-5)


@pytest.mark.slow
def test_later_frames_keep_the_sharpness_of_frame_0(incremental):
    from neus2cli.train.frames import field_for_frame

    run_dir, _ = incremental
    inv_s = [field_for_frame(run_dir, k, Compute.cpu())[0].model.inv_s.detach().item() for k in range(3)]
    # dynamic.freeze_sharpness: learned on and on, s grew 40x in 5 frames and tracking failed.
    assert inv_s[1] == inv_s[0] and inv_s[2] == inv_s[0], inv_s


TINY = [
    *CPU_SETTINGS,
    "first_frame_steps=8",
    "next_frame_steps=6",
    "global_movement_steps=2",
    "output.mesh_resolution=24",
    "sampling.target_samples=2048",
]


def test_per_frame_mode_runs(sequence, tmp_path, capsys):
    run_dir, metrics = train_dynamic(
        sequence, resolve_config("fast", TINY), tmp_path / "pf", mode="per-frame", frames="0:2", progress=False
    )
    assert [f["index"] for f in metrics["frames"]] == [0, 1]
    for k in (0, 1):
        t = json.loads((run_dir / "frames" / f"{k:04d}" / "transform.json").read_text())
        np.testing.assert_allclose(t["world_to_canonical"], np.eye(4))  # every frame is its own canonical frame

    # A damaged stored field: export-mesh names the file and exits 2 without a traceback.
    from tests.test_data_convert import run_cli

    damaged = run_dir / "frames" / "0001" / "field.bin"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert run_cli(["export-mesh", str(run_dir), "--frame", "1", "--out", str(tmp_path / "m.ply")]) == 2
    err = capsys.readouterr().err
    assert "field.bin" in err and "frame 0001" in err and "Traceback" not in err
    assert not (tmp_path / "m.ply").exists()


def test_resume_continues_after_the_last_finished_frame(sequence, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = DynamicRun.train_frame
    calls = []

    def stop_at_frame_2(self, index, scene, first):
        calls.append(index)
        if index == 2 and len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, index, scene, first)

    monkeypatch.setattr(DynamicRun, "train_frame", stop_at_frame_2)
    with pytest.raises(TrainingInterrupted):
        train_dynamic(sequence, resolve_config("fast", TINY), out, progress=False)
    first_mesh = (out / "frames" / "0000" / "mesh.ply").stat().st_mtime_ns
    assert not (out / "frames" / "0002").exists()
    _, metrics = train_dynamic(sequence, resolve_config("fast", TINY), out, resume=True, progress=False)
    assert calls == [0, 1, 2, 2]  # only frame 2 was trained again
    assert [f["index"] for f in metrics["frames"]] == [0, 1, 2]
    assert (out / "frames" / "0000" / "mesh.ply").stat().st_mtime_ns == first_mesh


def test_resume_trains_the_frames_deleted_after_a_damaged_one(sequence, tmp_path, monkeypatch):
    # The damaged-frame hint says: delete that frame's folder and the later ones, then --resume. The
    # resume point still says frame 2 finished; what is on disk decides: frames 1 and 2 train again,
    # from frame 0's field as read back from the frame store.
    import shutil

    from neus2cli.train.frames import field_for_frame

    out = tmp_path / "run"
    train_dynamic(sequence, resolve_config("fast", TINY), out, progress=False)
    kept_mesh = (out / "frames" / "0000" / "mesh.ply").read_bytes()
    for k in (1, 2):
        shutil.rmtree(out / "frames" / f"{k:04d}")
    real = DynamicRun.train_frame
    calls = []

    def record(self, index, scene, first):
        calls.append((index, first, {k: v.clone() for k, v in self.prev_field.items()} if self.prev_field else None))
        return real(self, index, scene, first)

    monkeypatch.setattr(DynamicRun, "train_frame", record)
    _, metrics = train_dynamic(sequence, resolve_config("fast", TINY), out, resume=True, progress=False)
    assert [c[0] for c in calls] == [1, 2] and not calls[0][1]  # frame 1 continues incrementally
    assert [f["index"] for f in metrics["frames"]] == [0, 1, 2]
    assert (out / "frames" / "0000" / "mesh.ply").read_bytes() == kept_mesh
    # Frame 1 started from frame 0's stored field, exactly (the store is lossless).
    frame0, _, _ = field_for_frame(out, 0, Compute.cpu())
    for name, value in frame0.model.state_dict().items():
        torch.testing.assert_close(calls[0][2][name], value, rtol=0, atol=0, msg=name)
    # The rebuilt chain is whole again: frame 2 decodes from frame 0's keyframe and the new deltas.
    frame2, _, _ = field_for_frame(out, 2, Compute.cpu())
    assert all(torch.isfinite(v).all() for v in frame2.model.state_dict().values() if v.is_floating_point())


def test_bad_frame_range_is_a_user_error(sequence, tmp_path):
    from neus2cli.errors import UserError

    with pytest.raises(UserError, match="frames"):
        train_dynamic(sequence, resolve_config("fast", TINY), tmp_path / "x", frames="5:9", progress=False)
