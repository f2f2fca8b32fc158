"""`sdtune dataset build --captioner` as a user runs it, on tiny random Florence-2, Llava (JoyCaption-style) and BLIP
folders: the real CLI, the real load-and-generate path, offline. Captions are nonsense; modes, trigger/class and
the never-overwrite rule are what is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import make_images  # noqa: E402
from tiny_captioners import BUILDERS, made_of_words  # noqa: E402


def sdtune(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "sdtune", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def _rows(out: Path) -> dict[str, str]:
    return {r["file_name"]: r["text"] for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}


# (architecture, mode, what the captioned photo img00 keeps of its own caption "sks person, on a beach")
CASES = [("florence2", None, "sks person, on a beach"), ("llava", "prefix", "sks person, <new>, on a beach"),
         ("blip", "replace", "sks person, <new>")]


@pytest.mark.slow  # builds a model folder and starts the CLI (~10 s each)
@pytest.mark.parametrize("arch,mode,own", CASES, ids=[c[0] for c in CASES])
def test_captioner_cli_modes_on_each_architecture(tmp_path, arch, mode, own):
    model = BUILDERS[arch](tmp_path / f"tiny-{arch}")
    src = make_images(tmp_path / "photos", 3)
    (src / "img00.txt").write_text("sks person, on a beach", encoding="utf-8")
    out = tmp_path / "data"
    args = ["dataset", "build", str(src), str(out), "--captioner", str(model), "--trigger", "sks", "--class",
            "person", "--batch-size", "2", "--max-new-tokens", "5"] + (["--mode", mode] if mode else [])
    proc = sdtune(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(out)
    for name in ("img01.png", "img02.png"):  # no caption before: "sks person, " + the model's words
        assert rows[name].startswith("sks person, ") and made_of_words(rows[name].removeprefix("sks person, "))
    mine = rows["img00.png"]
    if "<new>" not in own:
        assert mine == own  # fill: never overwritten
        assert "kept the own caption of 1 image " in proc.stdout and "2 from the captioner" in proc.stdout
    else:
        head, _, tail = own.partition("<new>")
        assert mine.startswith(head) and mine.endswith(tail) and made_of_words(mine[len(head):len(mine) - len(tail)])
        assert "3 from the captioner" in proc.stdout
    assert (src / "img00.txt").read_text(encoding="utf-8") == "sks person, on a beach"  # the source is never touched
    assert "captioning" in proc.stderr and "img" in proc.stderr  # the progress bar over images


@pytest.mark.slow  # four CLI starts
def test_captioner_cli_errors_are_one_line(tmp_path):
    src = make_images(tmp_path / "photos", 1)
    bad = tmp_path / "not-a-captioner"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip"}))
    out = tmp_path / "data"
    proc = sdtune("dataset", "build", str(src), str(out), "--captioner", str(bad))
    lines = proc.stderr.strip().splitlines()  # one line, naming the folder and every supported architecture
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "CLIPModel" in lines[0] and "Florence2ForConditionalGeneration" in lines[0]
    assert "LlavaForConditionalGeneration" in lines[0] and "BlipForConditionalGeneration" in lines[0]
    assert not (out / "metadata.jsonl").exists()  # failed before any image was written
    alone = sdtune("dataset", "build", str(src), str(out), "--mode", "replace", "--trigger", "sks")  # the default
    assert alone.returncode == 2 and "captioning with florence-community/Florence-2-base (the default" in alone.stderr
    assert "'florence-community/Florence-2-base' as a hub id (needs network or the hub cache)" in alone.stderr
    fixed = sdtune("dataset", "build", str(src), str(out), "--caption", "x", "--trigger", "sks")
    assert fixed.returncode == 2 and "--trigger set how the captioner works, and --caption gives" in fixed.stderr
    mode = sdtune("dataset", "build", str(src), str(out), "--captioner", str(bad), "--mode", "overwrite")
    assert mode.returncode == 2
    assert "caption mode 'overwrite' is not one of fill, replace, prefix, suffix" in mode.stderr


@pytest.mark.slow
def test_build_help_teaches_the_captioners():
    text = " ".join(sdtune("dataset", "build", "--help").stdout.split())
    for words in ("--captioner", "florence-2", "joycaption", "--mode", "fill", "replace", "prefix", "--trigger",
                  "--class", "'sks person, <caption>'", "--prompt", "<MORE_DETAILED_CAPTION>", "--batch-size",
                  "--device", "--dtype", "never overwrites"):
        assert words in text, words
