"""Two-stage recipes end to end on the tiny model: both chains, weighted stacks, kohya round trip, extraction, resume.

Every output is loaded with plain diffusers (and, where it exists, sdtune's inference loader) and must change the
images; the interrupted recipe is stopped with a real SIGTERM and must finish bitwise equal to a straight run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "two-stage.yaml"
PROMPTS = ["a photo of sks person giving a thumbs up", "a person"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two-stage-data")
    make_images(root / "thumbs", 4, color=(220, 180, 40), captions=["a person giving a thumbs up"])
    make_images(root / "me", 3, color=(40, 90, 200))
    return root


def overrides(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}", "defaults.model.base=tiny", "defaults.data.resolution=32",
        "defaults.logging.trackers=[]", "defaults.train.gradient_checkpointing=false", "defaults.checkpoint.every=2",
        f"concept.data.train_dir={data / 'thumbs'}", "concept.data.caption_dropout=0", "concept.validation.prompts=[]",
        "concept.train.max_steps=4", "concept.train.learning_rate=0.001", "concept.train.lora.rank=4",
        f"person.data.instance_dir={data / 'me'}", f"person.data.class_dir={out / 'class-person'}",
        "person.data.num_class_images=2", "person.data.class_generation_steps=2", "person.validation.prompts=[]",
        "person.train.max_steps=4", "person.train.learning_rate=0.001", "person.train.lora.rank=4",
        "person.checkpoint.every=2", *extra,  # the recipe checkpoints the person every 100 steps
    ]


def images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPTS, num_inference_steps=3, height=32, width=32, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]).images


def pipeline(ref: str | Path, loras: list[tuple[Path, float]] = ()):
    """Plain diffusers: a model folder (or 'tiny') plus LoRA files as named, weighted adapters."""
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline(str(ref))
    names = []
    for i, (path, _) in enumerate(loras):
        with warnings.catch_warnings():  # peft warns about a second adapter: a stack is the point here
            warnings.simplefilter("ignore", UserWarning)
            pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
        names.append(f"a{i}")
    if names:
        pipe.set_adapters(names, [w for _, w in loras])
    return pipe


def stack_images(stack: Path, weights: list[float] | None = None) -> np.ndarray:
    from sdtune.recipes.runs import read_stack

    base, adapters = read_stack(stack)
    return images(pipeline(base, [(p, weights[i] if weights else w) for i, (p, w, _) in enumerate(adapters)]))


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def test_lora_concept_then_person_lora(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_cli("run", str(RECIPE), *overrides(data, out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [manifest["stages"][s]["status"] for s in ("concept", "person")] == ["finished", "finished"]
    concept, person = out / "concept", out / "person"
    lora = "lora/pytorch_lora_weights.safetensors"
    assert (concept / lora).is_file() and (concept / "model" / "model_index.json").is_file()
    assert (person / lora).is_file() and not (person / "model").exists()
    assert manifest["stages"]["person"]["base"] == str(concept / "model")
    assert manifest["stages"]["person"]["metrics"]["steps"] == 4

    base = images(pipeline("tiny"))
    fused = images(pipeline(concept / "model"))
    with_concept_lora = images(pipeline("tiny", [(concept / lora, 1.0)]))
    trained = images(pipeline(concept / "model", [(person / lora, 1.0)]))  # what the person stage trained on
    assert differ(fused, base) > 5e-3, "the concept must change the images"
    assert differ(fused, with_concept_lora) < 1e-4, "concept/model is the base with the concept LoRA fused in"
    assert differ(trained, fused) > 5e-3, "the person LoRA must change the images"
    # the stack profile: base + concept LoRA + person LoRA, each weight adjustable
    assert differ(stack_images(person / "stack"), trained) < 1e-4
    assert differ(stack_images(person / "stack", [0.0, 1.0]), trained) > 5e-3
    try:
        from sdtune.inference import load_for_inference
    except ImportError:
        pass
    else:  # the inference module loads run folders and adapters.json stacks by itself
        assert differ(images(load_for_inference(str(person))), trained) < 1e-4
        assert differ(images(load_for_inference(str(person / "stack"))), trained) < 1e-4

    # kohya export of a trained LoRA: diffusers' kohya loader must give the same images as the diffusers file
    exported = run_cli("export", str(concept), "--format", "kohya")
    kohya = concept / "export" / "concept.safetensors"
    assert str(kohya) in exported.stdout and kohya.is_file()
    np.testing.assert_allclose(images(pipeline("tiny", [(kohya, 1.0)])), with_concept_lora, atol=1e-5)

    before = (person / "metrics.json").stat().st_mtime_ns
    again = run_cli("run", str(RECIPE), *overrides(data, out))
    assert again.stdout.count("already finished") == 2
    assert (person / "metrics.json").stat().st_mtime_ns == before


def _svd_error(base_unet, tuned_unet, rank: int) -> float:
    """Relative truncation error over linear / 1x1-conv layers, computed here independently of sdtune."""
    base = dict(base_unet.named_modules())
    err = total = 0.0
    for name, module in tuned_unet.named_modules():
        linear = isinstance(module, torch.nn.Linear)
        pointwise = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if not (linear or pointwise):
            continue
        delta = (module.weight - base[name].weight).detach().double().reshape(module.weight.shape[0], -1)
        s = torch.linalg.svdvals(delta)
        err, total = err + float(s[rank:].pow(2).sum()), total + float(s.pow(2).sum())
    return (err / total) ** 0.5


def test_full_concept_then_person_lora(data: Path, tmp_path: Path) -> None:
    from sdtune.models.loading import load_pipeline

    out = tmp_path / "out"
    run_cli("run", str(RECIPE), *overrides(data, out, "concept.train.lora=null", "concept.extract_rank=4",
                                           "concept.train.learning_rate=0.0005"))
    concept, person = out / "concept", out / "person"
    report = json.loads((concept / "lora" / "extraction.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["concept"]["method"] == "text-to-image-full"
    assert manifest["stages"]["concept"]["extraction"]["relative_error"] == pytest.approx(report["relative_error"])
    base_pipe, full_pipe = load_pipeline("tiny"), load_pipeline(str(concept / "model"))
    assert report["rank"] == 4 and 0 < report["relative_error"] < 1
    assert report["relative_error"] == pytest.approx(_svd_error(base_pipe.unet, full_pipe.unet, 4), rel=1e-3)

    # at full rank (128 >= every layer's smaller side) the extracted layers are reproduced within 1e-4
    full_rank = run_cli("export", "lora", "--from", str(concept), "--rank", "128", "--conv",
                        "-o", str(tmp_path / "rank128"))
    assert "relative error" in full_rank.stdout
    exact = json.loads((tmp_path / "rank128" / "extraction.json").read_text())
    assert exact["relative_error"] < 1e-4 and exact["conv"] and exact["coverage"] > 0.9
    base, full = images(base_pipe), images(full_pipe)
    extracted = images(pipeline("tiny", [(tmp_path / "rank128" / "pytorch_lora_weights.safetensors", 1.0)]))
    assert differ(full, base) > 5e-3
    assert differ(extracted, full) < 0.5 * differ(base, full), "the extracted LoRA must carry the fine-tune"

    lora = person / "lora" / "pytorch_lora_weights.safetensors"
    trained = images(pipeline(concept / "model", [(lora, 1.0)]))
    assert differ(trained, full) > 5e-3
    adapters = json.loads((person / "stack" / "adapters.json").read_text())
    assert (person / "stack" / adapters[0]["path"]).resolve() == concept / "lora" / "pytorch_lora_weights.safetensors"
    approx = stack_images(person / "stack")  # the extracted concept LoRA stands in for the full fine-tune
    assert differ(approx, trained) < differ(images(pipeline("tiny", [(lora, 1.0)])), trained)


def test_interrupted_recipe_resumes_exactly(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "sdtune", "run", str(RECIPE),
            *overrides(data, out, "concept.train.max_steps=2", "person.train.max_steps=8")]
    marker = out / "person" / "checkpoints" / "step-000002" / "state.json"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    while proc.poll() is None and not marker.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["concept"]["status"] == "finished"
    assert manifest["stages"]["person"]["status"] == "interrupted"
    stopped_at = manifest["stages"]["person"]["step"]
    assert 2 <= stopped_at < 8 and not (out / "person" / "metrics.json").exists()

    resumed = run_cli("run", str(RECIPE), *overrides(data, out, "concept.train.max_steps=2",
                                                     "person.train.max_steps=8"))
    assert "resumed from" in resumed.stdout and "already finished" in resumed.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    events = [e["event"] for e in manifest["stages"]["person"]["history"]]
    assert events == ["started", f"interrupted at step {stopped_at}", "resuming from the latest checkpoint",
                      "finished at step 8"]
    assert manifest["stages"]["person"]["metrics"]["steps"] == 8

    # the same person stage without interruption gives the very same weights
    from sdtune.config import load_config
    from sdtune.training.loop import train

    cfg = load_config(out / "person" / "config.yaml", [f"output_dir={tmp_path / 'straight'}"])
    train(cfg)
    name = "checkpoints/step-000008/trainable.safetensors"
    straight, interrupted = load_file(str(tmp_path / "straight" / name)), load_file(str(out / "person" / name))
    assert straight.keys() == interrupted.keys()
    assert all(torch.equal(straight[k], interrupted[k]) for k in straight)
