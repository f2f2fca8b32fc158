"""Every path a request names stays inside the workspace."""

from __future__ import annotations

import os

import pytest

from sdtune.jobs.workspace import OutsideWorkspace, check_name, find_workspace, inside


def test_inside_refuses_escapes(tmp_path):
    ws = find_workspace(tmp_path / "ws")
    outside = tmp_path / "secret"
    outside.mkdir()
    os.symlink(outside, ws / "datasets" / "link")
    assert inside(ws, "datasets/a/b.png") == ws / "datasets" / "a" / "b.png"
    for bad in ("../secret", "datasets/../../secret", "/etc/passwd", "datasets/link/x", "datasets/link",
                "a\\..\\b", "C:/x", "x\x00y", ""):
        with pytest.raises(OutsideWorkspace):
            inside(ws, bad)


def test_names_are_one_plain_component():
    assert check_name("me-2.v1") == "me-2.v1"
    for bad in ("..", "a/b", ".hidden", "a..b", "", "x" * 65, "a b"):
        with pytest.raises(Exception, match="not allowed"):
            check_name(bad)


def test_workspace_from_option_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SDTUNE_WORKSPACE", str(tmp_path / "env"))
    assert find_workspace(tmp_path / "opt") == (tmp_path / "opt").resolve()
    assert find_workspace(None) == (tmp_path / "env").resolve()
    monkeypatch.delenv("SDTUNE_WORKSPACE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert find_workspace(None) == (tmp_path / "xdg" / "sdtune").resolve()
    assert (tmp_path / "xdg" / "sdtune" / "runs").is_dir()
