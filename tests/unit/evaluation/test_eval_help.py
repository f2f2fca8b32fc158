"""The offline way to score (``--clip toy``: the built-in toy CLIP, no download) is in the help of the commands that
take ``--clip``: offline, eval failed with a message about the hub, and its help never named the way out."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdtune.cli import app


@pytest.mark.parametrize("command", ["eval", "pick"])
def test_clip_help_names_the_offline_toy_backbone(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=1000, env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    option = text.split("CLIP backbone: hub id, local folder, or toy (the built-in toy", 1)
    assert len(option) == 2 and "offline" in option[1].split("--", 1)[0], text


def test_eval_help_says_how_to_score_offline() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"], terminal_width=1000, env={"COLUMNS": "1000"})
    text = " ".join(result.output.replace("│", " ").split())
    assert "Offline (no model hub): --clip toy scores with the built-in toy CLIP" in text
