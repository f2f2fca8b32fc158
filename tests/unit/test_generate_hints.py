"""`sdtune generate` (and the commands that share its readers) say what is wrong with what was passed, naming options
the command has: a LoRA weight that is no number, a prompts file with no prompts, a pickle-format model."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.cli import main
from sdtune.errors import SdtuneError
from sdtune.inference.generate import read_prompts
from sdtune.inference.pipeline import parse_adapter_spec


def _error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and "Traceback" not in err, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("spec", "weight"), [("loose.safetensors:abc", "abc"), ("runs/me:0.8x", "0.8x"),
                                              ("runs/me:nan", "nan"), ("runs/me:", "")])
def test_a_lora_weight_that_is_no_number_is_named(spec: str, weight: str) -> None:
    with pytest.raises(SdtuneError, match=f"--lora {spec}: weight '{weight}' is not a number"):
        parse_adapter_spec(spec)


def test_a_colon_in_an_existing_path_is_part_of_the_path(tmp_path: Path) -> None:
    odd = tmp_path / "me:v2"
    odd.mkdir()
    assert parse_adapter_spec(str(odd)) == (str(odd), 1.0)
    assert parse_adapter_spec(f"{odd}:0.5") == (str(odd), 0.5)
    assert parse_adapter_spec("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)


def test_generate_names_the_weight_not_a_missing_file(tmp_path: Path, capsys) -> None:
    line = _error_line(capsys, "generate", "tiny", "-p", "x", "--lora", "loose.safetensors:abc", "-o", tmp_path / "g")
    assert "weight 'abc' is not a number" in line and "does not exist" not in line, line


def test_a_prompts_file_of_comments_says_it_has_no_prompts(tmp_path: Path, capsys) -> None:
    comments = tmp_path / "commentprompts.txt"
    comments.write_text("# a photo of sks dog\n\n   # another\n", encoding="utf-8")
    with pytest.raises(SdtuneError, match="has no prompts"):
        read_prompts(comments)
    with pytest.raises(SdtuneError, match="has no prompts"):
        read_prompts(comments, ["a flag prompt"])
    for command in (("generate", "tiny", "-o", tmp_path / "g"), ("eval", "tiny", "--out", tmp_path / "e")):
        line = _error_line(capsys, *command, "--prompts", comments)
        assert f"{comments} has no prompts (only comments and blank lines)" in line, line
        assert "pass --prompt" not in line, line
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  base: tiny\n", encoding="utf-8")
    line = _error_line(capsys, "pick", run, "--prompts", comments, "--out", tmp_path / "p")
    assert "has no prompts" in line, line


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_pickle_model_points_at_the_commands_own_option(tmp_path: Path, capsys, command: str) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    line = _error_line(capsys, command, ckpt, "-p", "x", "-o", tmp_path / "g")
    assert "--allow-pickle" in line and "model.allow_pickle" not in line, line
