"""The model card's code (RUN/README.md) runs as pasted on both stacks sdtune claims: its own and the older common one
``make compat-venv`` builds (diffusers 0.35, peft 0.17, transformers 4), offline, as a user without a hub runs it.

Real runs (the CLI, two steps on a tiny base saved as every stack loads it), their cards' python block executed by
each stack's own interpreter in a fresh process. diffusers 0.35 refuses ``load_lora_weights(folder)`` offline
without ``weight_name`` ("you must specify a `weight_name`"), which the card used to omit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import make_images, run_cli, tiny_config

ROOT = Path(__file__).resolve().parents[2]
OLD_PYTHON = Path(os.environ.get("SDTUNE_COMPAT_PYTHON") or ROOT / ".venv-compat" / "bin" / "python")
PROMPT = "a photo of sks dog"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA run and a textual-inversion run, each trained by the CLI on a portable tiny base folder."""
    from sdtune.models.loading import load_pipeline
    from sdtune.models.portable import save_pipeline

    root = tmp_path_factory.mktemp("card")
    base = root / "base model"
    save_pipeline(load_pipeline("tiny"), base)  # as RUN/model is saved: loads on transformers 4 and 5
    data = make_images(root / "data", 2)
    found = {}
    for kind, train in (("lora", {"lora": {"rank": 2}, "max_steps": 2}),
                        ("textual-inversion", {"textual_inversion": {"token": "<sks-dog>", "initializer": "dog"},
                                               "max_steps": 2})):
        cfg = tiny_config(root / kind, {"instance_dir": str(data), "instance_prompt": PROMPT.replace(
            "sks", "<sks-dog>") if kind != "lora" else PROMPT}, train, model={"base": str(base)})
        (root / f"{kind}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        run_cli("train", str(root / f"{kind}.yaml"))
        found[kind] = root / kind
    return found


def card_code(run: Path) -> str:
    text = (run / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    call = re.search(r"pipe\((.*)\)\.images\[0\]", code)
    assert call, code
    return code.replace(call.group(0), f"pipe({call.group(1)}, num_inference_steps=2).images[0]")  # fast, same code


@pytest.mark.parametrize("stack", ["ours", "diffusers-0.35"])
@pytest.mark.parametrize("kind", ["lora", "textual-inversion"])
def test_the_model_card_runs_as_pasted_on_each_stack(runs: dict[str, Path], kind: str, stack: str,
                                                      tmp_path: Path) -> None:
    python = Path(sys.executable) if stack == "ours" else OLD_PYTHON
    if not python.is_file():
        pytest.skip(f"no old-stack venv at {OLD_PYTHON}: run `make compat-venv` (or set SDTUNE_COMPAT_PYTHON)")
    (tmp_path / "card.py").write_text(card_code(runs[kind]), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "") if stack == "ours"
           else ""}  # the old stack has no sdtune: the card must not need it for a folder base
    proc = subprocess.run([str(python), "card.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{kind} card on {stack}:\n{proc.stderr[-3000:]}"
    assert (tmp_path / "sample.png").stat().st_size > 0


def test_the_card_names_the_prompt_word_other_tools_give_an_embedding(runs: dict[str, Path]) -> None:
    """AUTOMATIC1111 names an embedding after its file's stem, ComfyUI writes ``embedding:<stem>``: the card says
    which word that is when the token has characters no file name takes."""
    run = runs["textual-inversion"]
    (file,) = (run / "embeddings").glob("*.safetensors")
    card = (run / "README.md").read_text(encoding="utf-8")
    assert file.stem != "<sks-dog>"
    assert f"`{file.stem}` (AUTOMATIC1111)" in card and f"`embedding:{file.stem}` (ComfyUI)" in card
