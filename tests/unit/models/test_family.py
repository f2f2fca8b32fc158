"""Model families: SDXL's conditioning is what diffusers' SDXL pipeline computes, time ids are each image's real
resize and crop, the VAE precision rule, and family detection from a folder."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdtune.data.transforms import apply_transform, plan_transform
from sdtune.models.family import SD, SDXL, family_of_folder


@pytest.fixture(scope="module")
def xl_pipe():
    from sdtune.models.loading import load_pipeline

    return load_pipeline("tiny-xl")


def test_sdxl_conditioning_is_the_pipelines_own(xl_pipe) -> None:
    """Penultimate hidden states of both encoders concatenated, pooled from the second: bitwise what
    ``StableDiffusionXLPipeline.encode_prompt`` feeds the UNet, from the (2, L) ids the training stream holds."""
    tokenizer, text_encoder = SDXL.text_of(xl_pipe)
    prompts = ["a photo of sks dog", ""]
    ids = torch.cat([tokenizer(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
                     for p in prompts])
    assert ids.shape == (2, 2, 77)
    cond = SDXL.encode(text_encoder, ids)
    hidden, _, pooled, _ = xl_pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    assert cond.hidden.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)
    assert torch.equal(cond.hidden, hidden) and torch.equal(cond.pooled, pooled)
    kwargs = SDXL.unet_kwargs(cond, torch.tensor([[36.0, 40, 2, 3, 32, 32]] * 2))
    assert kwargs["added_cond_kwargs"]["time_ids"].shape == (2, 6)
    out = xl_pipe.unet(torch.zeros(2, 4, 16, 16), torch.tensor([10, 10]), **kwargs).sample
    assert out.shape == (2, 4, 16, 16)


@pytest.mark.parametrize("flip", [False, True])
def test_time_ids_are_the_real_resize_and_crop(flip: bool) -> None:
    """(original h, w, crop top, left, target h, w): the crop box, in the resized image, that gives the training
    pixels; for a flipped variant the box in the flipped resized image (flip-then-crop, as diffusers fixed it)."""
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))  # 70 wide, 50 high
    plan = plan_transform(source.size, (32, 28), center_crop=False, random_flip=flip, rng=random.Random(3))
    if flip:
        while not plan.flip:
            plan = plan_transform(source.size, (32, 28), False, True, random.Random(random.random()))
    oh, ow, top, left, th, tw = plan.crop_geometry()
    assert (oh, ow, th, tw) == (50, 70, 28, 32)
    resized = source.resize(plan.resized, Image.Resampling.BICUBIC)
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    expected = np.asarray(resized.crop((left, top, left + tw, top + th)), dtype=np.float32) / 127.5 - 1.0
    assert np.array_equal(apply_transform(source, plan).permute(1, 2, 0).numpy(), expected)


def test_stream_items_carry_each_images_time_ids(tmp_path: Path) -> None:
    """Each training item (and its class image) carries its own original size, crop and bucket."""
    from sdtune.config import DataConfig
    from sdtune.data.subsets import build_stream
    from sdtune.models.family import DualTokenizer
    from sdtune.models.presets import build_tiny_tokenizer

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 36), (200, 0, 0)).save(folder / "wide.png")
    Image.new("RGB", (24, 48), (0, 0, 200)).save(folder / "tall.png")
    tok = build_tiny_tokenizer()
    data = DataConfig(instance_dir=folder, instance_prompt="a photo of sks dog", resolution=32)
    stream = build_stream(data, DualTokenizer(tok, tok), seed=1)
    seen = {}
    for position in range(4):
        item = stream[position]
        assert item["input_ids"].shape == (2, 77)
        oh, ow, _, _, th, tw = item["crop_geometry"].tolist()
        seen[(int(oh), int(ow))] = (int(th), int(tw))
    record = stream.bucket_record()["images"]
    assert seen == {(36, 40): tuple(int(x) for x in reversed(record[str(folder / "wide.png")].split("x"))),
                    (48, 24): tuple(int(x) for x in reversed(record[str(folder / "tall.png")].split("x")))}


def test_sdxl_vae_stays_fp32_under_fp16_unless_it_is_fp16_safe() -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, force_upcast=True)
    fixed = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, force_upcast=False)
    assert SDXL.vae_dtype(vae, torch.float16) == torch.float32
    assert SDXL.vae_dtype(fixed, torch.float16) == torch.float16
    assert SDXL.vae_dtype(vae, torch.bfloat16) == torch.bfloat16  # bf16 has fp32's range: no overflow
    assert SD.vae_dtype(vae, torch.float16) == torch.float16  # SD 1/2 as before


def test_family_is_read_from_the_folder() -> None:
    from sdtune.models.loading import load_components, model_family
    from sdtune.models.presets import preset_path

    assert family_of_folder(preset_path("tiny-xl")) is SDXL and model_family("tiny-xl") is SDXL
    assert family_of_folder(preset_path("tiny")) is SD and model_family("tiny") is SD
    comps = load_components("tiny-xl")
    assert comps.family is SDXL and type(comps.text_encoder).__name__ == "DualTextEncoder"


def test_sdxl_buckets_are_its_64_px_shapes() -> None:
    """SDXL downsamples 32x but trained on 64 px buckets: 1024 px gives its usual shapes, not hundreds."""
    from sdtune.data.buckets import bucket_resolutions, bucket_step_of
    from sdtune.models.real import read_component_config

    step = bucket_step_of(read_component_config("real-sdxl", "vae"), read_component_config("real-sdxl", "unet"))
    assert step == 64 and bucket_step_of(read_component_config("real-sd15", "vae"),
                                         read_component_config("real-sd15", "unet")) == 64
    buckets = bucket_resolutions(1024, step)
    assert {(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (896, 1152)} <= set(buckets)
    assert len(buckets) < 100
