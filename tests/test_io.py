"""Atomic writes: a storage failure (a full disk) is a user error that loses nothing."""

from __future__ import annotations

import errno
import os

import pytest

from neus2cli.errors import UserError
from neus2cli.io import atomic_write, atomic_write_text
from tests.test_data_convert import run_cli
from tests.test_data_scenes import write_neus_folder


def _disk_full(_tmp):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_a_user_error_and_the_old_file_stays(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(UserError, match="No space left on device") as info:
        atomic_write(target, _disk_full)
    assert str(target) in str(info.value.path)
    assert target.read_text() == "old"  # nothing replaced
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_a_program_error_is_not_disguised_as_a_storage_error(tmp_path):
    def broken(_tmp):
        raise OSError(errno.EINVAL, "bad argument")

    with pytest.raises(OSError, match="bad argument"):
        atomic_write(tmp_path / "x.txt", broken)
    assert not list(tmp_path.iterdir())


def test_a_command_on_a_full_disk_exits_2_without_a_traceback(tmp_path, monkeypatch, capsys):
    # convert-neus writes every output through atomic_write: the disk fills on the first file.
    src, _, _ = write_neus_folder(tmp_path / "src", n=4)

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("neus2cli.io.os.replace", no_space)
    code = run_cli(["convert-neus", str(src), str(tmp_path / "dst")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "dst").exists()  # the destination is made whole or not at all
