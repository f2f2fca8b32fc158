"""Loss masks: they follow the image's resize, crop and flip, weight the loss as documented, and the checks name
missing, other-size and empty masks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdtune.config import DataConfig
from sdtune.data.masks import latent_weights, mask_problems, mask_tensor, read_mask
from sdtune.data.transforms import Transform, plan_transform
from sdtune.errors import DataError
from sdtune.training.losses import weighted_loss
from tests.helpers import make_images


def _left_half(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


def test_mask_follows_the_resize_crop_and_flip_of_its_image() -> None:
    mask = _left_half((80, 40))
    plain = mask_tensor(mask, Transform((80, 40), (64, 32), 16, 0, (32, 32), False))
    assert plain.shape == (1, 32, 32)
    assert plain[0, :, :8].min() == 1.0 and plain[0, :, 18:].max() == 0.0, "the crop starts 16 px in"
    flipped = mask_tensor(mask, Transform((80, 40), (64, 32), 16, 0, (32, 32), True))
    assert torch.equal(flipped, plain.flip(-1)), "a flipped image has a flipped mask"
    plan = plan_transform((80, 40), (32, 32), False, True, random.Random(3))
    image = Image.new("RGB", (80, 40))
    image.paste((255, 255, 255), (0, 0, 40, 40))
    from sdtune.data.transforms import apply_transform

    pixels = apply_transform(image, plan)[0] > 0  # the white half, where the image's plan put it
    assert torch.equal(mask_tensor(mask, plan)[0] > 0.5, pixels)
    with pytest.raises(DataError, match="masks must have their image's size"):
        mask_tensor(_left_half((40, 40)), plan)


def test_masked_loss_is_the_mean_inside_the_mask_and_unmasked_without_one() -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    weights = torch.tensor([1.0, 0.5])
    plain = weighted_loss(pred, target, weights, 2)
    ones = latent_weights(torch.ones(2, 1, 32, 32), (8, 8), 0.0)
    assert torch.equal(weighted_loss(pred, target, weights, 2, ones), plain)
    anything = latent_weights(torch.rand(2, 1, 32, 32), (8, 8), 1.0)
    assert torch.allclose(weighted_loss(pred, target, weights, 2, anything), plain), "outside weight 1 = no mask"
    half = torch.zeros(2, 1, 32, 32)
    half[..., :16] = 1.0
    error = (pred - target) ** 2
    expected = (error[..., :4].mean(dim=(1, 2, 3)) * weights).sum() / 2
    assert torch.allclose(weighted_loss(pred, target, weights, 2, latent_weights(half, (8, 8), 0.0)), expected)
    between = latent_weights(half, (8, 8), 0.25)
    assert between[0, 0, 0, 0] == 1.0 and between[0, 0, 0, 7] == 0.25


def test_mask_checks_name_missing_other_size_and_empty_masks(tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 4)  # img00..img03.png, 40x36
    masks = tmp_path / "masks"
    masks.mkdir()
    _left_half((40, 36)).save(masks / "img00.png")
    _left_half((40, 36)).convert("RGB").save(masks / "img01.jpg")  # another format, same stem: found
    _left_half((20, 18)).save(masks / "img02.png")
    Image.new("L", (40, 36), 0).save(masks / "empty.png")
    found = {p.name: kind for p, _, kind in mask_problems(sorted(images.glob("*.png")), masks)}
    assert found == {"img02.png": "mask size", "img03.png": "mask missing"}
    Image.new("L", (40, 36), 0).save(masks / "img03.png")
    found = {p.name: kind for p, _, kind in mask_problems(sorted(images.glob("*.png")), masks)}
    assert found["img03.png"] == "mask empty"
    assert read_mask(images / "img01.png", masks).mode == "L"

    alpha = Image.new("RGBA", (40, 36), (10, 20, 30, 0))
    alpha.paste((10, 20, 30, 255), (0, 0, 20, 36))
    alpha.save(tmp_path / "cut.png")
    assert torch.equal(mask_tensor(read_mask(tmp_path / "cut.png", None), Transform((40, 36), (40, 36), 0, 0,
                                                                                      (40, 36), False)),
                       mask_tensor(_left_half((40, 36)), Transform((40, 36), (40, 36), 0, 0, (40, 36), False)))
    with pytest.raises(DataError, match="has none: save it with transparency, or set data.mask_dir"):
        read_mask(images / "img00.png", None)


def test_stream_items_carry_masks_and_class_images_count_everywhere(tmp_path: Path) -> None:
    from sdtune.data.subsets import build_stream, collate
    from sdtune.models.presets import build_tiny_tokenizer

    images = make_images(tmp_path / "photos", 2)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("img00", "img01"):
        _left_half((40, 36)).save(masks / f"{name}.png")
    classes = make_images(tmp_path / "class", 2, color=(10, 10, 200))
    data = DataConfig(instance_dir=images, instance_prompt="a photo of sks dog", with_prior_preservation=True,
                      class_dir=classes, class_prompt="a photo of a dog", num_class_images=2, resolution=32,
                      random_flip=True, masked_loss=True, mask_dir=masks)
    stream = build_stream(data, build_tiny_tokenizer(), 0, batch_size=2)
    batch = collate([stream[0], stream[1]])
    group = batch["groups"][0]
    assert group["loss_mask"].shape[0] == group["pixel_values"].shape[0] == 4
    assert group["loss_mask"].shape[1:] == (1, *group["pixel_values"].shape[2:])
    assert group["loss_mask"][:2].min() == 0.0 and group["loss_mask"][2:].min() == 1.0, "class images: all ones"
    with pytest.raises(ValueError, match="set data.masked_loss=true"):
        DataConfig(instance_dir=images, instance_prompt="a photo of sks dog", mask_dir=masks)


@pytest.mark.parametrize("names,image,expected", [
    (["IMG_1.edit.png", "IMG_1.png"], "IMG_1.jpg", "IMG_1.png"),  # a glob of the stem matched the other first
    (["x1.png", "x[1].png"], "x[1].jpg", "x[1].png"),  # ... and read the brackets as a character class
    (["me.1.png"], "me.jpg", None),
    (["me.JPG"], "me.png", "me.JPG"),
])
def test_a_mask_is_found_by_its_exact_name(tmp_path: Path, names, image, expected) -> None:
    from sdtune.data.masks import mask_file

    for name in names:
        Image.new("L", (4, 4), 255).save(tmp_path / name, format="PNG")
    found = mask_file(tmp_path / "photos" / image, tmp_path)
    assert (found.name if found else None) == expected
