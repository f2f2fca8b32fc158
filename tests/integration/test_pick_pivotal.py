"""``sdtune eval --checkpoints``, ``pick`` and ``export`` on a pivotal run whose LoRA starts late
(``train.textual_inversion.lora_start``), through the real CLI on ``tiny``.

Its first checkpoints hold the LoRA as initialised (the identity): pick used to keep one, say "the LoRA moves outputs
by up to 0.00" and export a LoRA file that changes nothing. And the kohya export bundles the token under its own
name (``bundle_emb.<sks>.*``, which AUTOMATIC1111 reads as the prompt word ``<sks>``), while its message named only
ComfyUI's ``embedding:_sks_``."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import run_cli, train_pivotal_sequence

pytestmark = pytest.mark.slow

PROMPT = "a photo of <sks> dog"
BEFORE = ("before the LoRA starts (step 3, train.textual_inversion.lora_start 0.5): only the token's embedding has "
          "learned")


@pytest.fixture(scope="module")
def pivotal_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_pivotal_sequence(tmp_path_factory.mktemp("pivotal"), "<sks>", PROMPT, "piv")


def test_eval_labels_the_token_only_checkpoints(pivotal_run: Path, tmp_path: Path) -> None:
    proc = run_cli("eval", str(pivotal_run), "--checkpoints", "--clip", "toy", "--seeds", "1", "--steps", "2",
                   "-p", PROMPT, "-o", str(tmp_path / "eval"), env={"COLUMNS": "200"})
    assert f"note: piv: steps 1 and 2 are {BEFORE}; their LoRA is the identity" in proc.stdout
    assert "piv @ step 2 (token only)" in proc.stdout and "piv @ step 3 (token only)" not in proc.stdout
    labels = [m["label"] for m in json.loads((tmp_path / "eval" / "results.json").read_text())["models"]]
    assert labels == ["piv @ step 1 (token only)", "piv @ step 2 (token only)", "piv @ step 3",
                      "piv @ step 4 (final)"]
    assert html.escape(f"steps 1 and 2 are {BEFORE}") in (tmp_path / "eval" / "report.html").read_text()


def test_kohya_export_says_what_to_write_in_each_tool(pivotal_run: Path) -> None:
    from sdtune.models.embeddings import unbundle

    proc = run_cli("export", str(pivotal_run), "--format", "kohya")
    exported = load_file(str(pivotal_run / "export" / "piv.safetensors"))
    assert list(unbundle(exported)) == ["<sks>"] and "bundle_emb.<sks>.string_to_param.*" in exported
    out = " ".join(proc.stdout.split())
    assert "(keys bundle_emb.<sks>.*). AUTOMATIC1111 names it after that key: write <lora:piv:1> <sks> in the " \
           "prompt" in out
    copy = pivotal_run / "export" / "piv" / "_sks_.safetensors"  # its own folder: the name is the prompt word
    assert copy.is_file() and f"ComfyUI does not read the bundle: LoraLoader for the LoRA, and {copy} to " \
                              "models/embeddings/, write embedding:_sks_ in the prompt" in out
    assert "this LoRA is the identity" not in proc.stderr  # the run's own LoRA trained from step 3


def test_pick_of_a_token_only_checkpoint_says_so_and_exports_the_embedding(pivotal_run: Path,
                                                                            tmp_path: Path) -> None:
    run = tmp_path / "piv"
    shutil.copytree(pivotal_run, run)
    shutil.rmtree(run / "export", ignore_errors=True)
    for step in (3, 4):  # only checkpoints of the token's phase left: whichever is kept, it is one of them
        shutil.rmtree(run / "checkpoints" / f"step-{step:06d}")
    proc = run_cli("pick", str(run), "-p", PROMPT, "--clip", "toy", "--seeds", "1", "--steps", "2")
    record = json.loads((run / "picked" / "pick.json").read_text())
    step = record["step"]
    line = f"step {step} is {BEFORE}; its LoRA is the identity"
    out = " ".join(proc.stdout.split())
    assert f"the kept {line}" in out and record["token_only"] == line and f"the kept {line}" in record["rule"]
    assert record["label"] == f"piv @ step {step} (token only)"
    assert html.escape(line) in (run / "pick" / "report.html").read_text()
    # the export is what the checkpoint learned: the embedding alone, not a LoRA file that changes nothing
    folder = f"piv-step-{step:06d}"  # the step's own folder: the file's name is the prompt word, so not the step
    assert [p.relative_to(run / "export").as_posix() for p in (run / "export").rglob("*")] == [
        folder, f"{folder}/_sks_.safetensors"]
    # and `sdtune export` of the final run beside it writes its own copy, leaving the picked step's (found by a
    # newcomer: both wrote export/_sks_.safetensors, the later replacing the picked embedding without a word)
    picked_embedding = (run / "export" / folder / "_sks_.safetensors").read_bytes()
    run_cli("export", str(run), "--format", "kohya")
    assert (run / "export" / folder / "_sks_.safetensors").read_bytes() == picked_embedding
    assert (run / "export" / "piv" / "_sks_.safetensors").is_file()
    assert "the token's embedding alone: no LoRA file" in out and "write embedding:_sks_ in the prompt" in out
    # exporting the picked folder's LoRA anyway: said, not shown as a working LoRA
    export = run_cli("export", str(run / "picked"), "--format", "kohya")
    assert f"note: {line}; in this file only the bundled token changes the model" in export.stderr
