"""Class images carry what made them; a folder made for another model, prompt or resolution is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdtune.config import config_from_dict
from sdtune.data.class_images import MANIFEST, check_class_folder, class_identity, generate_class_images
from sdtune.errors import ConfigError


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("class") / "person"
    assert generate_class_images(folder, "a photo of a person", 2, "tiny", resolution=32, steps=1) == 2
    return folder


def test_generated_images_record_model_prompt_resolution_and_seeds(made: Path) -> None:
    manifest = json.loads((made / MANIFEST).read_text())
    assert manifest["made_for"] == {"base": "tiny", "revision": None, "variant": None,
                                    "prompts": ["a photo of a person"], "resolution": 32}
    assert manifest["images"] == {f"class-0000{i}.png": {"seed": i, "steps": 1, "dtype": "float32"} for i in (0, 1)}
    assert manifest["prediction_type"] == "epsilon" and manifest["sampler"]
    text = json.loads(Image.open(made / "class-00001.png").text["sdtune"])
    assert text["prompts"] == ["a photo of a person"] and text["seed"] == 1 and text["base"] == "tiny"


@pytest.mark.parametrize("change,wanted", [
    ({"prompt": "a photo of a blue star"}, "'a photo of a blue star' by tiny at 32 px"),
    ({"model_ref": "tiny-v"}, "'a photo of a person' by tiny-v at 32 px"),
    ({"resolution": 512}, "'a photo of a person' by tiny at 512 px"),
])
def test_a_folder_made_for_something_else_is_refused_with_both_sides_and_the_fix(made: Path, change: dict,
                                                                                   wanted: str) -> None:
    args = {"prompt": "a photo of a person", "model_ref": "tiny", "resolution": 32} | change
    with pytest.raises(ConfigError) as refused:
        generate_class_images(made, args["prompt"], 4, args["model_ref"], resolution=args["resolution"])
    message = str(refused.value)
    assert "\n" not in message and str(made) in message
    assert "made from 'a photo of a person' by tiny at 32 px" in message and f"this run wants {wanted}" in message
    assert "data.class_dir" in message and len(list(made.glob("class-*.png"))) == 2, "nothing may be generated"


def test_a_run_is_refused_before_its_data_check_and_model_load(made: Path, tmp_path: Path) -> None:
    """The reported case: the ready config's shared folder held images another model made from another prompt."""
    from sdtune.training.loop import train

    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "model": {"base": "tiny-v"},
                            "data": {"instance_dir": str(tmp_path / "missing"), "instance_prompt": "sks star",
                                     "with_prior_preservation": True, "class_dir": str(made),
                                     "class_prompt": "a photo of a blue star", "resolution": 32}})
    with pytest.raises(ConfigError, match="class images made from 'a photo of a person' by tiny"):
        train(cfg)  # the instance folder is missing: the data check would have raised DataError


def test_your_own_photos_without_a_record_are_used_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), (i * 90, 40, 40)).save(folder / f"person{i}.jpg")
    check_class_folder(folder, class_identity("a photo of a person", "tiny", resolution=32))
    assert generate_class_images(folder, "a photo of a person", 2, "tiny", resolution=32) == 0
    assert not (folder / MANIFEST).exists()


def test_a_record_whose_images_are_gone_does_not_refuse(made: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / MANIFEST).write_text((made / MANIFEST).read_text())  # the generated images were deleted
    check_class_folder(folder, class_identity("a photo of a blue star", "toy", resolution=32))


def test_a_model_that_fails_to_load_leaves_no_empty_class_folder_to_block_the_next_run(tmp_path: Path) -> None:
    """Found by a newcomer: `sdtune train` with a hub id on an offline machine failed to load the model after it
    had made data.class_dir; the next run (model.base=tiny) then stopped on "no readable images" in that empty
    folder instead of generating the class images. Neither half may happen: no folder is made before the model
    loads, and an empty class folder counts as missing."""
    from sdtune.data.check_before_train import check_training_data
    from sdtune.errors import SdtuneError

    folder = tmp_path / "class-person"
    with pytest.raises((SdtuneError, OSError, ValueError)):
        generate_class_images(folder, "a photo of a person", 2, str(tmp_path / "no-such-model"), resolution=32)
    assert not folder.exists()
    folder.mkdir()  # as an older sdtune (or a user's mkdir) left it
    me = tmp_path / "me"
    me.mkdir()
    Image.new("RGB", (40, 40), (200, 40, 40)).save(me / "0.png")
    check_training_data(config_from_dict({"model": {"base": "tiny"}, "data": {
        "instance_dir": str(me), "instance_prompt": "a photo of sks person", "resolution": 32,
        "with_prior_preservation": True, "class_dir": str(folder), "class_prompt": "a photo of a person"}}))
