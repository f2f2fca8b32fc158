"""`sdtune export` on a run that has no LoRA says what the run has instead and how other tools load it."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sdtune.cli import main


def test_kohya_export_of_a_textual_inversion_run_points_at_its_embedding(tmp_path, capsys) -> None:
    run = tmp_path / "person"
    (run / "embeddings").mkdir(parents=True)
    config = {"model": {"base": "tiny"}, "output_dir": str(run),
              "train": {"textual_inversion": {"token": "sks", "initializer": "person"}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    save_file({"sks": torch.zeros(1, 32)}, str(run / "embeddings" / "sks.safetensors"))
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(run), "--format", "kohya"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    assert f"no LoRA in {run}" in err and "textual-inversion run" in err
    assert str(run / "embeddings" / "sks.safetensors") in err
    assert "AUTOMATIC1111: copy it to its embeddings/ folder and write sks in the prompt" in err
    assert "embedding:sks" in err and "load_textual_inversion" in err


def test_kohya_export_of_a_stack_names_the_runs_to_export(tmp_path, capsys) -> None:
    """RUN/stack holds the concept's and the person's LoRAs (and the person's token): not one LoRA to export, and
    not a textual-inversion run, as the message used to say."""
    import json

    stack = tmp_path / "person" / "stack"
    (stack / "embeddings").mkdir(parents=True)
    save_file({"<sks>": torch.zeros(1, 32)}, str(stack / "embeddings" / "_sks_.safetensors"))
    (stack / "adapters.json").write_text(json.dumps([
        {"name": "concept", "path": "../../concept/lora/pytorch_lora_weights.safetensors", "weight": 1.0},
        {"name": "person", "path": "../lora/pytorch_lora_weights.safetensors", "weight": 1.0}]), encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(stack), "--format", "kohya"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err
    assert "textual-inversion run" not in err and "a stack of 2 LoRAs" in err
    assert f"`sdtune export {tmp_path / 'concept'} --format kohya`" in err
    assert f"`sdtune export {tmp_path / 'person'} --format kohya`" in err
