"""Run by ANOTHER Python (``make compat-venv``: diffusers 0.35, peft 0.17, transformers 4): load LoRA files the way
users of that stack do and compare the outputs with the adapter that was trained.

Self-contained on purpose: that venv has no sdtune. ``tests/integration/test_lora_compat.py`` prepares FOLDER:

    FOLDER/base/{unet,vae,text_encoder}/    a tiny SD, text encoder under transformers 4 names
    FOLDER/inputs.safetensors               sample, timesteps, context (UNet); ids (text encoder)
    FOLDER/cases/NAME/<file>.safetensors    a LoRA file (diffusers or kohya format)
    FOLDER/cases/NAME/expected.safetensors  UNet and text-encoder outputs of the trained adapter
    FOLDER/models/NAME/                     a full pipeline folder as sdtune saves RUN/model, with its
                                            expected.safetensors beside model_index.json

and reads one JSON line per case from stdout: the largest differences, or the error that stopped the load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel


def _pipeline(base: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(base / "vae")), text_encoder=CLIPTextModel.from_pretrained(
            str(base / "text_encoder")), tokenizer=None, unet=UNet2DConditionModel.from_pretrained(str(base / "unet")),
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@torch.no_grad()
def _outputs(pipe: StableDiffusionPipeline, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"unet": pipe.unet(inputs["sample"], inputs["timesteps"], inputs["context"]).sample,
            "text_encoder": pipe.text_encoder(inputs["ids"])[0]}


def main(folder: Path) -> int:
    import diffusers
    import peft
    import transformers

    print(json.dumps({"stack": {"diffusers": diffusers.__version__, "peft": peft.__version__,
                                "transformers": transformers.__version__, "torch": torch.__version__}}), flush=True)
    inputs = load_file(str(folder / "inputs.safetensors"))
    for case in sorted(p for p in (folder / "cases").iterdir() if p.is_dir()):
        (lora,) = [p for p in case.glob("*.safetensors") if p.name != "expected.safetensors"]
        result: dict = {"case": case.name}
        try:
            pipe = _pipeline(folder / "base")
            pipe.load_lora_weights(str(case), weight_name=lora.name)
            got, want = _outputs(pipe, inputs), load_file(str(case / "expected.safetensors"))
            result.update({part: float((got[part] - want[part]).abs().max()) for part in want})
        except Exception as exc:  # noqa: BLE001 - every failure is a result to report, not a crash
            cause = f" (caused by {exc.__cause__!r})" if exc.__cause__ else ""
            result["error"] = f"{type(exc).__name__}: {exc}{cause}"[:800]
        print(json.dumps(result), flush=True)
    for model in sorted(p for p in (folder / "models").glob("*") if p.is_dir()):
        result = {"case": f"model:{model.name}"}
        try:  # transformers 4 loads a text encoder saved under other names with random weights and only a warning
            pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None,
                                                           requires_safety_checker=False)
            got, want = _outputs(pipe, inputs), load_file(str(model / "expected.safetensors"))
            result.update({part: float((got[part] - want[part]).abs().max()) for part in want})
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"{type(exc).__name__}: {exc}"[:800]
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
