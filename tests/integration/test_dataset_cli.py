"""`sdtune dataset build` / `check` as a user runs them: real subprocesses, hostile files, no tracebacks.

Each CLI start costs ~5 s here (diffusers import), so tests making several calls are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "data"))
from hostile_corpus import BAD, make_corpus, pattern, tree_digest  # noqa: E402


def sdtune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "sdtune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow  # several CLI starts (~5 s each: the CLI imports diffusers)
def test_help_teaches():
    top = sdtune("dataset", "--help")
    assert top.returncode == 0 and "build" in top.stdout and "check" in top.stdout
    build = sdtune("dataset", "build", "--help").stdout
    for words in ("--captioner", "--template", "--caption", "--captions", "--concept", "--max-size", "--strict",
                  "metadata.jsonl", "Examples"):
        assert words in build, words
    check = " ".join(sdtune("dataset", "check", "--help").stdout.split())  # the help re-wraps at any width
    for words in ("--json", "--resolution", "--require-captions", "--model", "own limit", "estimate against 77",
                  "aspect-ratio buckets"):
        assert words in check, words


@pytest.mark.slow  # several CLI starts (~5 s each: the CLI imports diffusers)
def test_build_then_check_a_hostile_folder(tmp_path):
    src = make_corpus(tmp_path / "my photos")
    before = tree_digest(src)
    out = tmp_path / "dataset"
    built = sdtune("dataset", "build", str(src), str(out), "--max-size", "512", "--no-progress")
    assert built.returncode == 0, built.stderr
    assert "wrote 10 images" in built.stdout
    for name, reason in BAD.items():
        lines = [line for line in built.stdout.splitlines() if f"{name}:" in line]
        assert len(lines) == 1 and reason in lines[0], (name, built.stdout)
    assert tree_digest(src) == before

    raw = sdtune("dataset", "check", str(src), "--resolution", "48")
    assert raw.returncode == 1 and "NOT OK" in raw.stdout and "bomb.png" in raw.stdout
    clean = sdtune("dataset", "check", str(out), "--json")
    report = json.loads(clean.stdout)
    assert clean.returncode == 0 and report["ok"] is True and report["images"] == 10 and report["errors"] == []
    assert any("near-duplicate" in w for w in report["warnings"])
    required = sdtune("dataset", "check", str(out), "--json", "--require-captions")
    assert required.returncode == 1 and len(json.loads(required.stdout)["errors"]) == 7


def test_strict_stops_with_one_line_and_status_2(tmp_path):
    src = make_corpus(tmp_path / "src")
    proc = sdtune("dataset", "build", str(src), str(tmp_path / "out"), "--strict", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "bomb.png" in proc.stderr and "--strict" in proc.stderr


def test_captions_csv_with_hostile_rows(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "ü 1.png")
    pattern(1).save(src / "two.png")
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text('file,caption\n"ü 1.png","a photo of sks person 😀"\n../../etc/passwd,x\n/etc/passwd,x\n'
                        "gone.png,x\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = sdtune("dataset", "build", str(src), str(out), "--captions", str(csv_file), "--caption", "fixed",
                  "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "'../../etc/passwd' escapes the source folder; refused" in proc.stdout
    assert "absolute path '/etc/passwd' refused" in proc.stdout and "'gone.png' not found" in proc.stdout
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [{"file_name": "two.png", "text": "fixed"}, {"file_name": "ü 1.png",
                                                                "text": "a photo of sks person 😀"}]


@pytest.mark.slow  # several CLI starts (~5 s each: the CLI imports diffusers)
def test_usage_errors_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "a.png")
    both = sdtune("dataset", "build", str(src), str(tmp_path / "o"), "--caption", "x", "--captioner", "y")
    assert both.returncode == 2 and "either --caption" in both.stderr
    missing = sdtune("dataset", "build", str(tmp_path / "nope"), str(tmp_path / "o"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    inside = sdtune("dataset", "build", str(src), str(src / "out"))
    assert inside.returncode == 2 and "overlap" in inside.stderr
    nothing = sdtune("dataset", "check", str(tmp_path / "nope"))
    assert nothing.returncode == 2 and "does not exist" in nothing.stderr


@pytest.mark.slow
def test_check_counts_tokens_with_the_model_tokenizer(tmp_path):
    pattern(0).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(" ".join(["photo"] * 80), encoding="utf-8")
    proc = sdtune("dataset", "check", str(tmp_path), "--model", "tiny", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["token_count"] == "tokenizer"
    assert any("caption is 82 tokens;" in w for w in report["warnings"])


def _train_registered() -> bool:
    return " train " in sdtune("--help").stdout


@pytest.mark.slow
def test_merged_two_concept_dataset_trains_on_the_tiny_model(tmp_path):
    if not _train_registered():
        pytest.skip("`sdtune train` is not registered yet")
    import yaml

    thumbs, me = tmp_path / "thumbs", tmp_path / "me"
    thumbs.mkdir()
    me.mkdir()
    for i in range(3):
        pattern(i, (48, 40)).save(thumbs / f"thumb {i}.png")
        (thumbs / f"thumb {i}.txt").write_text(f"a person giving a thumbs up, variant {i} 👍", encoding="utf-8")
        pattern(10 + i, (40, 48)).save(me / f"IMG_{i}.png")
    data = tmp_path / "mix"
    first = sdtune("dataset", "build", str(thumbs), str(data), "--concept", "thumbsup", "--no-progress")
    second = sdtune("dataset", "build", str(me), str(data), "--concept", "sks", "--caption",
                    "a photo of sks person", "--no-progress")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted({r["concept"] for r in rows}) == ["sks", "thumbsup"] and len(rows) == 6
    assert all(r.get("text") for r in rows)

    run = tmp_path / "run"
    config = {"output_dir": str(run), "model": {"base": "tiny"}, "data": {"train_dir": str(data), "resolution": 32},
              "train": {"max_steps": 2, "lora": {"rank": 4}}, "checkpoint": {"every": 100}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = sdtune("train", str(tmp_path / "run.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()
