"""The test tree collects under pytest's default (prepend) import mode.

Test folders without ``__init__.py`` import their files by basename, so two ``test_x.py`` in different folders
stop the whole run at collection ("import file mismatch") — CI failed exactly so once. This check names the
clash in one line instead of after nine minutes of the suite.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _modules_by_name() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if path.name.startswith("test_") and not (path.parent / "__init__.py").exists():
            found[path.stem].append(path.relative_to(TESTS))
    return found


def test_no_two_test_files_in_package_less_folders_share_a_basename() -> None:
    clashes = {name: paths for name, paths in _modules_by_name().items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
