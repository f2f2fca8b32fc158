"""The run's model card gives code that runs as pasted (item 3): loadable base, a real prompt, quoted strings."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from sdtune.config import config_from_dict, resolve_config
from sdtune.training.outputs import write_model_card
from tests.helpers import make_images, tiny_config

QUOTED = 'a photo of "sks" thing, it\'s `odd` $HOME'


def _card(tmp_path: Path, data: dict, train: dict | None = None, **sections) -> tuple[str, str, Path]:
    run = tmp_path / "my run"
    cfg = resolve_config(config_from_dict(tiny_config(run, data, train or {"lora": {"rank": 2}}, **sections)))
    run.mkdir(parents=True, exist_ok=True)
    write_model_card(run, cfg, {"steps": 4})
    text = (run / "README.md").read_text()
    python = re.search(r"```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    shell = re.search(r"```sh\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    return python, shell, run


def test_t2i_card_without_validation_prompts_uses_a_caption_and_quotes_it(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data", 2, captions=[QUOTED])
    python, shell, run = _card(tmp_path, {"train_dir": str(data)})
    ast.parse(python)
    call = [n for n in ast.walk(ast.parse(python)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "pipe"]
    assert call and call[0].args[0].value == QUOTED  # type: ignore[attr-defined]
    assert shlex.split(shell) == ["sdtune", "generate", str(run), "--prompt", QUOTED]
    assert 'from_pretrained("tiny")' not in python and "preset_path('tiny')" in python


def test_card_of_a_built_in_base_runs_as_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdtune.config import LoraConfig
    from sdtune.models.lora import save_lora
    from tests.helpers import tiny_pipeline_with_lora

    data = make_images(tmp_path / "data", 2)
    python, _, run = _card(tmp_path, {"instance_dir": str(data), "instance_prompt": QUOTED})
    settings = LoraConfig(rank=2)
    pipe = tiny_pipeline_with_lora(settings)
    save_lora(run / "lora", pipe.unet, pipe.text_encoder, settings)
    python = python.replace(f"pipe({QUOTED!r})", f"pipe({QUOTED!r}, num_inference_steps=2)")  # fast, same code
    monkeypatch.chdir(tmp_path)
    exec(compile(python, "README.md", "exec"), {"__name__": "card"})  # noqa: S102 - the card's own code
    assert (tmp_path / "sample.png").is_file()


@pytest.mark.parametrize("base", ["stabilityai/stable-diffusion-2-1-base", "model.safetensors", "it's/a folder"])
def test_card_code_parses_for_any_base(tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if base.endswith(".safetensors"):
        (tmp_path / base).write_bytes(b"")
    data = make_images(tmp_path / "data", 2)
    python, _, _ = _card(tmp_path, {"instance_dir": str(data), "instance_prompt": "a 'sks' dog"},
                         model={"base": base})
    ast.parse(python)
    assert ("from_single_file" in python) == base.endswith(".safetensors")


def test_a_full_model_in_the_run_is_what_the_card_loads(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data", 2)
    run = tmp_path / "my run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "model_index.json").write_text("{}")
    python, _, _ = _card(tmp_path, {"instance_dir": str(data), "instance_prompt": "x"}, {})
    assert f"from_pretrained({str(run / 'model')!r})" in python and "load_lora_weights" not in python


@pytest.mark.parametrize("vae", ["file", "tiny-v", "model folder"])
def test_card_loads_the_runs_vae_as_training_did(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vae: str) -> None:
    """A single-file VAE takes the base's vae/config.json (diffusers would fetch one from the hub: offline, an
    error); a built-in model or a model folder as model.vae is loaded from its vae/ (the card said
    ``AutoencoderKL.from_pretrained('tiny-v')``, which no loader can read)."""
    import torch
    from safetensors.torch import save_file

    from sdtune.models.loading import load_components
    from sdtune.models.presets import preset_path

    base_vae = load_components("tiny").vae
    if vae == "file":
        vae = str(tmp_path / "vae.safetensors")
        save_file({k: v.contiguous() for k, v in base_vae.state_dict().items()}, vae)
    elif vae == "model folder":
        vae = str(preset_path("tiny"))
    data = make_images(tmp_path / "data", 2)
    python, _, _ = _card(tmp_path, {"instance_dir": str(data), "instance_prompt": "x"}, {}, model={"base": "tiny",
                                                                                                    "vae": vae})
    python = python[:python.index("pipe.load_lora_weights(")]  # the base with the run's VAE (no LoRA saved here)
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "card"}
    exec(compile(python, "README.md", "exec"), scope)  # noqa: S102 - the card's own code
    expected = load_components("tiny-v").vae if vae == "tiny-v" else base_vae
    loaded = scope["pipe"].vae.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), loaded, strict=True))


@pytest.mark.parametrize("kind,label,loads", [
    ("lora", "LoRA", "--format kohya"), ("dora", "DoRA", "lora/lycoris.safetensors"),
    ("loha", "LoHa", "lora/lycoris.safetensors"), ("lokr", "LoKr", "lora/lycoris.safetensors"),
])
def test_card_names_the_adapter_kind_and_where_tools_load_it(tmp_path: Path, kind: str, label: str, loads: str) -> None:
    """A LoHa run's card said "**dreambooth-lora**" and "LoRA rank / alpha": a LoHa is a LyCORIS adapter that
    diffusers' load_lora_weights cannot load, and the card must say so (found by a new user)."""
    data = make_images(tmp_path / "data", 2)
    run = tmp_path / "my run"
    cfg = resolve_config(config_from_dict(tiny_config(run, {"instance_dir": str(data), "instance_prompt": "x"},
                                                      {"lora": {"rank": 2, "kind": kind}})))
    run.mkdir(parents=True)
    write_model_card(run, cfg, {"steps": 4})
    text = (run / "README.md").read_text()
    assert cfg.method == f"dreambooth-{kind}" and f"**dreambooth-{kind}**" in text
    assert f"| method | dreambooth-{kind} |" in text
    assert f"| {label} rank / alpha | 2 / 2 |" in text and f"| adapter | {label} (" in text
    assert loads in text.split("| AUTOMATIC1111 / ComfyUI |")[1].splitlines()[0]
    if kind in ("loha", "lokr"):
        assert "LyCORIS" in text and "not a plain LoRA" in text and "LoRA rank" not in text
        code = re.search(r"```python\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
        assert "load_lora_weights" not in code and "merge_comfyui" in code  # how it loads: not as a LoRA
        assert "`load_lora_weights` cannot load it" in text


def test_method_names_the_adapter_kind_everywhere_it_is_read() -> None:
    """cfg.method is what metrics.json, recipe manifests and the card say a run trained."""
    def method(train: dict) -> str:
        return config_from_dict({"data": {"instance_dir": "d", "instance_prompt": "a sks dog"}, "train": train}).method

    assert method({"lora": {"kind": "lokr"}}) == "dreambooth-lokr"
    assert method({"lora": {"kind": "lora"}, "textual_inversion": {"token": "sks"}}) == "dreambooth-pivotal"
    assert method({"lora": {"kind": "dora"}, "textual_inversion": {"token": "sks"}}) == "dreambooth-pivotal-dora"
    assert method({}) == "dreambooth-full"


def test_card_names_the_loss_terms_and_the_ema_that_shaped_the_weights(tmp_path: Path) -> None:
    """Output preservation, EMA and the loss options change what the saved weights are: the card says so (a
    newcomer found a preservation run's card silent about it)."""
    data = {"instance_dir": str(make_images(tmp_path / "data", 2)), "instance_prompt": "a photo of sks dog",
            "class_prompt": "a photo of a dog"}
    train = {"lora": {"rank": 2}, "preservation": {"weight": 2.0}, "ema": {"decay": 0.99}, "snr_gamma": 5.0}
    _, _, run = _card(tmp_path, data, train)
    text = (run / "README.md").read_text()
    assert "| output preservation | weight 2 on 1 prompt: `a photo of a dog` |" in text
    assert "| EMA | decay 0.99: the saved weights are the average |" in text
    assert "| loss options | min-SNR-gamma 5.0, noise offset 0 |" in text
    _, _, plain = _card(tmp_path / "plain", data)
    assert not any(row in (plain / "README.md").read_text() for row in ("output preservation", "| EMA", "loss opt"))


def test_a_pivotal_card_says_which_word_each_tool_reads(tmp_path: Path) -> None:
    """Found by a newcomer review: the card named the embedding file's word (`_sks_`) only, while the kohya export
    of a pivotal run bundles the token, which AUTOMATIC1111 names after its key (`<sks>`, with the LoRA in the
    prompt); ComfyUI reads no bundle."""
    data = make_images(tmp_path / "data", 2)
    learned = {"token": "<sks>", "ti_fraction": 0.5, "lora_start": 0.5}
    _card(tmp_path, {"instance_dir": str(data), "instance_prompt": "a photo of <sks> dog"},
          {"lora": {"rank": 2}, "textual_inversion": learned})
    text = (tmp_path / "my run" / "README.md").read_text()
    assert "write `_sks_` (AUTOMATIC1111) or `embedding:_sks_` (ComfyUI)" in text
    assert "the kohya export alone (the token bundled in it): `<lora:NAME:1> <sks>` in AUTOMATIC1111" in text
