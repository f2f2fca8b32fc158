"""Model references: presets, folders, pickle refusal, and the tiny model's determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.errors import ModelLoadError
from sdtune.models.loading import check_weights_file, load_components, resolve_model_ref
from sdtune.models.presets import build_tiny_pipeline, build_tiny_tokenizer, preset_path


def test_tiny_is_built_once_and_deterministic() -> None:
    path = preset_path("tiny")
    assert (path / "model_index.json").exists() and preset_path("tiny") == path
    a, b = build_tiny_pipeline(), build_tiny_pipeline()
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters(), strict=True))


def test_tiny_v_predicts_velocity() -> None:
    assert load_components("tiny-v").noise_scheduler.config.prediction_type == "v_prediction"
    comps = load_components("tiny", prediction_type="v_prediction")
    assert comps.noise_scheduler.config.prediction_type == "v_prediction"


def test_tokenizer_handles_unicode_and_truncates_to_77() -> None:
    tok = build_tiny_tokenizer()
    ids = tok("a photo of sks person 👍 é " * 40, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_pickle_files_refused_without_opt_in(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        check_weights_file(ckpt, allow_pickle=False)
    check_weights_file(ckpt, allow_pickle=True)


def test_bad_references(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        resolve_model_ref(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_ref("./missing/model")


def test_a_missing_path_suggests_only_close_names_in_its_folder(tmp_path: Path) -> None:
    """Reported: `generate /tmp/nonexist` suggested /tmp/cost."""
    from sdtune.models.refs import _no_such_path

    for name in ("cost", "my-run"):
        (tmp_path / name).mkdir()
    assert "did you mean" not in str(_no_such_path(str(tmp_path / "nonexist")))
    assert f"did you mean {tmp_path / 'my-run'}?" in str(_no_such_path(str(tmp_path / "my-rnu")))
