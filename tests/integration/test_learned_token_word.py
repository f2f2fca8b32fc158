"""A learned token that is a whole word of the tokenizer (``train.textual_inversion.token=person`` on ``tiny``,
whose CLIP has ``person</w>``) is added as a new token, which the tokenizer matches in every prompt that writes the
word: `sdtune train` used to accept it without a word. It is not refused (the demo writes ``sks``, a word of the toy's
CLIP), but said once; a token such as ``<person>`` is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _train(tmp: Path, token: str, **data) -> object:
    images = make_images(tmp / "data", 2)
    cfg = tiny_config(tmp / f"run-{token.strip('<>')}", {"instance_dir": str(images),
                                                         "instance_prompt": f"a photo of {token}", **data},
                      {"max_steps": 1, "textual_inversion": {"token": token}},
                      validation={"prompts": ["a photo of a person"]}, save={"verify": False})
    return run_cli("train", str(write_config(tmp / f"{token.strip('<>')}.yaml", cfg)), check=False)


def test_a_vocabulary_word_as_the_token_is_noted_once(tmp_path: Path) -> None:
    proc = _train(tmp_path, "person")
    assert proc.returncode == 0, proc.stderr
    note = ("note: train.textual_inversion.token 'person' is a word the tokenizer already has: added as the learned "
            "token, it is read wherever a prompt writes 'person' (any case, inside longer words too), so every prompt "
            "that writes it (validation prompts, and `sdtune generate` with this run) reads the learned embedding "
            "instead of the word: here validation prompt 'a photo of a person'; a new token such as <person> leaves "
            "the word alone")
    assert proc.stdout.count(note) == 1, proc.stdout
    fresh = _train(tmp_path / "new", "<person>")
    assert fresh.returncode == 0 and "is a word the tokenizer already has" not in fresh.stdout, fresh.stderr


def test_a_class_prompt_with_the_word_is_still_refused(tmp_path: Path) -> None:
    proc = _train(tmp_path, "person", class_prompt="a photo of a person", class_dir=str(tmp_path / "class"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.class_prompt 'a photo of a person' contains train.textual_inversion.token 'person'" in proc.stderr
