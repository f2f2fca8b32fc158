"""The write probe every command runs before its first step (``sdtune.writable``), on folders root cannot write."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sdtune.errors import ConfigError
from sdtune.writable import check_writable, denied_line, write_problem
from tests.helpers import immutable, locked_folder


def test_a_writable_folder_passes_and_nothing_is_left_or_created(tmp_path: Path) -> None:
    assert write_problem(tmp_path) is None
    assert write_problem(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == [], "the probe leaves nothing and creates no folder"


def test_a_locked_folder_is_named_with_the_key_and_the_fix(tmp_path: Path) -> None:
    with locked_folder(tmp_path) as locked:
        assert write_problem(locked) is not None
        missing = locked / "cache"
        assert f"in {locked}, where it would be created" in write_problem(missing)
        with pytest.raises(ConfigError) as caught:
            check_writable(missing, "data.cache_dir")
    message = str(caught.value)
    assert message.startswith(f"cannot write to {missing} (data.cache_dir): ")
    assert message.endswith("choose a writable folder with data.cache_dir=... or fix its permissions")
    assert "\n" not in message


def test_a_file_on_the_path(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("x")
    assert write_problem(file) == "it is a file, not a folder"
    assert write_problem(file / "run" / "samples") == f"{file} is a file, not a folder"
    with pytest.raises(ConfigError, match=r"--out FOLDER or fix"):
        check_writable(file / "run", "--out")


def test_a_broken_link_is_named(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert "broken link" in write_problem(tmp_path / "link" / "sub")


def test_permission_errors_that_get_past_the_checks_become_one_line() -> None:
    line = denied_line(PermissionError(errno.EACCES, "Permission denied", "/data/x.png"))
    assert line is not None and line.startswith("cannot use /data/x.png: permission denied")
    assert denied_line(OSError(errno.EROFS, "Read-only file system", "/mnt/r")) is not None
    renamed = PermissionError(errno.EPERM, "Operation not permitted", "/run/.c.yaml.7.tmp", None, "/run/config.yaml")
    assert denied_line(renamed).startswith("cannot use /run/config.yaml: operation not permitted")
    assert denied_line(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None
    assert denied_line(ValueError("x")) is None


def test_an_immutable_file_cannot_be_replaced_but_a_read_only_one_can(tmp_path: Path) -> None:
    import subprocess

    from sdtune.writable import replace_problem

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    plain.chmod(0o444)  # replaced by a rename, which mode bits do not stop
    assert replace_problem(plain) is None and replace_problem(tmp_path / "missing.json") is None
    locked = tmp_path / "metrics.json"
    locked.write_text("{}")
    if not immutable(locked):
        pytest.skip("chattr +i is not available here")
    try:
        assert "immutable or append-only" in replace_problem(locked)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_the_feature_cache_note_names_a_locked_kind_folder(tmp_path: Path) -> None:
    """A writable cache_dir whose latents/ (made by another user's run) is not: the run trains uncached too."""
    from sdtune.data.feature_cache import unwritable_note

    assert unwritable_note(tmp_path) is None
    with locked_folder(tmp_path, "latents") as locked:
        if locked.parent != tmp_path:
            pytest.skip("no way to lock a folder of our own here (chattr +i refused)")
        note = unwritable_note(tmp_path)
    assert note is not None and note.startswith(f"note: cannot write to {locked} (data.cache_dir): ")
    assert "training without the latent/text cache" in note and "data.cache_dir=..." in note
