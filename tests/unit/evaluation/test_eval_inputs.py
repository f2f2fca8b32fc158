"""`sdtune eval` inputs checked before anything loads (item 7): not-a-model, duplicates, seeds, --clip toy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.commands.evaluate import parse_seeds
from sdtune.errors import SdtuneError
from sdtune.evaluation.clip_score import toy_clip
from sdtune.evaluation.runner import check_models, choose_clip
from tests.helpers import make_images


def test_a_data_folder_is_not_a_model(tmp_path: Path) -> None:
    data = make_images(tmp_path / "db", 2)
    with pytest.raises(SdtuneError, match=r"db is not a model \(.*it holds images\)"):
        check_models(["toy", str(data)])


def test_the_same_model_twice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "toy1"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(SdtuneError, match="are the same model: pass it once"):
        check_models([str(folder), f"{folder}/"])


def test_duplicate_seeds_are_refused() -> None:
    with pytest.raises(SdtuneError, match="seed 0 is listed twice"):
        parse_seeds("0,0")
    assert parse_seeds("0,7,42") == [0, 7, 42] and parse_seeds("3") == [0, 1, 2]


def test_clip_toy_is_the_toy_models_clip() -> None:
    assert choose_clip(["tiny"], "toy") == str(toy_clip())
    with pytest.raises(SdtuneError, match="has no CLIP"):
        choose_clip(["toy"], "tiny")


@pytest.mark.parametrize("keys,what", [
    (["unet.down_blocks.0.attentions.0.to_q.lora_A.weight"], "is a LoRA"),  # diffusers / peft
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "is a LoRA"),  # kohya
    (["lora_unet_x.hada_w1_a"], "is a LoRA"),  # LyCORIS LoHa
    (["emb_params"], "textual-inversion embedding"),  # AUTOMATIC1111, SD 1/2
    (["clip_l", "clip_g"], "textual-inversion embedding"),  # SDXL
])
def test_an_adapter_file_given_as_a_model_says_what_it_is_before_anything_loads(tmp_path: Path, keys, what) -> None:
    """A LoRA file passed as the model went to from_single_file, which reported a hub connection error."""
    import torch
    from safetensors.torch import save_file

    from sdtune.errors import ModelLoadError
    from sdtune.models.loading import resolve_model_ref

    file = tmp_path / "me.safetensors"
    save_file({key: torch.zeros(2, 2) for key in keys}, str(file))
    for check in (lambda: check_models([str(file)]), lambda: resolve_model_ref(str(file))):
        with pytest.raises(ModelLoadError, match=what) as err:
            check()
        assert str(file) in str(err.value) and "\n" not in str(err.value)


def test_a_model_that_is_not_there_is_named_before_the_clip_backbone_loads(tmp_path: Path) -> None:
    from sdtune.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"model path .*nosuch.* does not exist"):
        check_models([str(tmp_path / "nosuch")])
    with pytest.raises(ModelLoadError, match="not a weights file"):
        (tmp_path / "notes.txt").write_text("x")
        check_models([str(tmp_path / "notes.txt")])


def test_a_hub_id_that_cannot_load_is_named_before_the_clip_backbone(monkeypatch) -> None:
    """Offline (or a hub without it), `sdtune eval nosuch` named only the CLIP backbone that failed first."""
    from sdtune.errors import ModelLoadError
    from sdtune.evaluation.runner import _check_before_backbones

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nosuch-model"):
        _check_before_backbones(["nosuch-model"], allow_pickle=False)
    _check_before_backbones(["toy"], allow_pickle=False)  # built-in: nothing to check
