"""Masked loss through the real CLI: cached latents and pixels train bitwise alike with masks (prior preservation,
flips), output preservation runs with it, the mask changes what trains, and bad masks stop the run in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _masks(images: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted(images.glob("*.png")):
        mask = Image.new("L", Image.open(image).size, 0)
        mask.paste(255, (0, 0, mask.size[0] // 2, mask.size[1]))
        mask.save(folder / image.name)
    return folder


def _run(tmp: Path, name: str, data: dict, **train) -> dict[str, torch.Tensor]:
    cfg = tiny_config(tmp / name, data, {"max_steps": 3, "lora": {"rank": 4}, "batch_size": 2, **train},
                      checkpoint={"every": 3, "keep": 1})
    out = run_cli("train", str(write_config(tmp / f"{name}.yaml", cfg)))
    assert "done: 3 steps" in out.stdout
    return load_file(str(tmp / name / "checkpoints" / "step-000003" / "trainable.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masked_training_is_cached_as_uncached_and_the_mask_matters(tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 3)
    data = {"instance_dir": str(images), "instance_prompt": "a photo of sks dog", "random_flip": True,
            "with_prior_preservation": True, "class_dir": str(tmp_path / "class"), "class_prompt": "a photo of a dog",
            "num_class_images": 2, "class_generation_steps": 1, "masked_loss": True,
            "mask_dir": str(_masks(images, tmp_path / "masks")), "cache_dir": str(tmp_path / "cache")}
    cached = _run(tmp_path, "cached", data)
    assert _equal(cached, _run(tmp_path, "uncached", {**data, "cache_latents": False}))
    unmasked = _run(tmp_path, "unmasked", {k: v for k, v in data.items() if k not in ("masked_loss", "mask_dir")})
    assert not _equal(cached, unmasked), "the mask must change what trains"
    assert _equal(unmasked, _run(tmp_path, "outside-1", {**data, "mask_outside_weight": 1.0})), \
        "outside weight 1 is no mask"

    kept = {k: v for k, v in data.items() if k not in ("with_prior_preservation", "class_dir", "class_prompt")}
    _run(tmp_path, "output-preservation", kept, preservation={"prompts": ["a photo of a dog"]})


def test_bad_masks_stop_the_run_before_the_model_loads_and_dataset_check_names_them(tmp_path: Path) -> None:
    images = make_images(tmp_path / "photos", 3)
    masks = _masks(images, tmp_path / "masks")
    (masks / "img01.png").unlink()
    Image.new("L", (40, 36), 0).save(masks / "img02.png")
    data = {"instance_dir": str(images), "instance_prompt": "a photo of sks dog", "masked_loss": True,
            "mask_dir": str(masks)}
    out = run_cli("train", str(write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", data))), check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "img01.png" in out.stderr and "no mask in data.mask_dir" in out.stderr
    assert "img02.png" in out.stderr and "its mask is empty" in out.stderr
    alpha = tiny_config(tmp_path / "run2", {**data, "mask_dir": None})
    out = run_cli("train", str(write_config(tmp_path / "a.yaml", alpha)), check=False)
    assert out.returncode != 0 and "reads the mask from the alpha channel" in out.stderr

    report = run_cli("dataset", "check", str(images), "--masks", str(masks), check=False)
    assert report.returncode == 1
    assert "img01.png" in report.stdout and "img02.png" in report.stdout and "mask" in report.stdout


def test_mask_start_trains_whole_images_first(tmp_path: Path) -> None:
    """data.mask_start: whole images before it (bitwise an unmasked run's steps), the masks after it."""
    images = make_images(tmp_path / "photos", 3)
    data = {"instance_dir": str(images), "instance_prompt": "a photo of sks dog", "masked_loss": True,
            "mask_dir": str(_masks(images, tmp_path / "masks"))}

    def steps(name: str, data: dict) -> list[dict[str, torch.Tensor]]:
        cfg = tiny_config(tmp_path / name, data, {"max_steps": 3, "lora": {"rank": 4}, "batch_size": 2},
                          checkpoint={"every": 1, "keep": 3})
        run_cli("train", str(write_config(tmp_path / f"{name}.yaml", cfg)))
        return [load_file(str(tmp_path / name / "checkpoints" / f"step-00000{s}" / "trainable.safetensors"))
                for s in (2, 3)]

    whole = steps("whole", {k: v for k, v in data.items() if k not in ("masked_loss", "mask_dir")})
    masked = steps("masked", data)
    later = steps("later", {**data, "mask_start": 0.6})  # round(0.6 * 3) = 2 whole-image steps, then masked
    assert _equal(later[0], whole[0]) and not _equal(later[0], masked[0]), "the first two steps: whole images"
    assert not _equal(later[1], whole[1]), "step 3: the masks apply"
    card = (tmp_path / "later" / "README.md").read_text()
    assert "| masked loss | masks from `" in card and "weight 0 outside, from step 3 (whole images before) |" in card
    proc = run_cli("train", str(write_config(tmp_path / "bad.yaml", tiny_config(
        tmp_path / "bad", {"instance_dir": str(images), "instance_prompt": "a photo of sks dog", "mask_start": 0.5}))),
        check=False)
    assert proc.returncode == 2 and "data.mask_start is set but data.masked_loss is false" in proc.stderr
