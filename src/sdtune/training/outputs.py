"""What a finished run leaves behind (DESIGN.md layout): RUN/lora, RUN/model, RUN/embeddings, RUN/README.md,
RUN/metrics.json.

Each output folder is written under a temporary name and renamed into place, so a crash while saving never
leaves a folder that loads half a model.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import torch

from sdtune.atomic import atomic_write_json, atomic_write_text, write_folder
from sdtune.config import RunConfig
from sdtune.config_errors import as_written
from sdtune.errors import SdtuneError
from sdtune.models.lora import LORA_WEIGHTS, save_lora
from sdtune.models.portable import save_pipeline
from sdtune.models.safetensors_files import reading_safetensors
from sdtune.run_folder import EMBEDDINGS_DIR, embedding_file_name
from sdtune.words import counted, first_few, plural


def base_pipeline(cfg: RunConfig):
    """The run's base model as a fresh fp32 pipeline, sampling with the objective the run trains.

    Loaded again rather than built from the live modules: under bf16/fp16 the frozen parts were cast down for
    training, and a saved model must hold the base's own weights, not a rounded copy of them. The scheduler is
    the base's inference scheduler with ``model.prediction_type`` applied: a v-prediction run saved with an
    epsilon scheduler samples noise.
    """
    from sdtune.models.loading import load_pipeline, set_prediction_type

    model = cfg.model
    pipe = load_pipeline(model.base, allow_pickle=model.allow_pickle, revision=model.revision, variant=model.variant,
                         torch_dtype=torch.float32, vae=model.vae)
    set_prediction_type(pipe, model.prediction_type)
    return pipe


def save_lora_output(run_dir: Path, cfg: RunConfig, unet, text_encoder,
                     release: Callable[[], None] | None = None) -> Path:
    """``RUN/lora``: the adapter matrices in fp32, the dtype they were trained in (as the diffusers scripts save).

    They stay fp32 under bf16/fp16 training (see ``configure_trainables``); ``load_lora_weights`` casts them to the
    pipeline's dtype when loading, so a half-precision pipeline takes the same file.

    With ``save.verify`` the written file is loaded the way users load it (diffusers ``load_lora_weights`` into a
    fresh base) and its outputs compared with the live adapter before the folder takes its name: a file that loads
    as another model is an error, not an output (``models/verify.py``). ``release`` (the end of a run: nothing
    reads the live model after this output) frees the live model once the file is checked against it, before that
    base is loaded: otherwise both are in memory at once (at SD-2 shapes on a CPU, 10.6 GB instead of 5.8).
    """
    assert cfg.train.lora is not None
    lora = cfg.train.lora
    if lora.kind != "lora":
        return _save_variant_output(run_dir, cfg, unet, text_encoder, release)

    def write(tmp: Path) -> None:
        file = save_lora(tmp, unet, text_encoder, lora)
        if cfg.save.verify:
            from sdtune.models.verify import verify_saved_lora

            model = cfg.model
            check = verify_saved_lora(file, unet, text_encoder, base=model.base, allow_pickle=model.allow_pickle,
                                      revision=model.revision, variant=model.variant, release=release)
            print(f"RUN/lora verified: {check.line()}")

    write_folder(run_dir / "lora", write)
    return run_dir / "lora" / LORA_WEIGHTS


def _save_variant_output(run_dir: Path, cfg: RunConfig, unet, text_encoder,
                         release: Callable[[], None] | None) -> Path:
    """``RUN/lora`` of a DoRA / LoHa / LoKr run (``sdtune.models.lycoris``): peft's own format, the kohya/LyCORIS
    file, and for DoRA the diffusers file; each loaded by its consumer and compared with the trained adapter."""
    from sdtune.models.lora_variants import kind_of
    from sdtune.models.lycoris import LYCORIS_FILE, write_lycoris_and_verify, write_peft_folder

    lora = cfg.train.lora
    assert lora is not None
    kind = kind_of(lora)

    def write(tmp: Path) -> None:
        if kind.diffusers:
            save_lora(tmp, unet, text_encoder, lora)
        write_peft_folder(tmp, unet, text_encoder, lora)
        if release is not None:
            release()
        model = cfg.model
        checks = write_lycoris_and_verify(tmp, kind.name, verify=cfg.save.verify, base=model.base,
                                          allow_pickle=model.allow_pickle, revision=model.revision,
                                          variant=model.variant)
        for check in checks:
            print(f"RUN/lora verified: {check.line()}")
        bad = [c for c in checks if not c.ok]
        if bad:
            raise SdtuneError(f"RUN/lora does not load as the trained {kind.name} adapter: {bad[0].line()}")

    write_folder(run_dir / "lora", write)
    return run_dir / "lora" / (LORA_WEIGHTS if kind.diffusers else LYCORIS_FILE)


def save_full_model(run_dir: Path, cfg: RunConfig, unet, text_encoder=None) -> Path:
    """``RUN/model``: the base pipeline with the trained UNet (and text encoder, when trained), all in fp32.

    ``text_encoder`` is None when it was frozen: the base's own (fp32) one is saved, not the training copy.
    """
    from sdtune.models.loading import family_of_pipeline

    pipe = base_pipeline(cfg)
    pipe.unet = unet.to(torch.float32)  # trained weights are fp32 already (configure_trainables): a no-op
    if text_encoder is not None:  # SDXL: both encoders (one module in training, see models.family)
        for name, module in family_of_pipeline(pipe).text_parts(text_encoder.to(torch.float32)).items():
            setattr(pipe, name, module)
    return write_folder(run_dir / "model", lambda tmp: save_pipeline(pipe, tmp))


def save_fused_model(run_dir: Path, cfg: RunConfig, out: Path | None = None) -> Path:
    """A full pipeline with the run's LoRA fused into the base weights (for tools that take no LoRA), written to
    ``out`` (default ``RUN/model``: the run's own output; a command that only reads the run passes its own folder)."""
    out = out or run_dir / "model"
    pipe = base_pipeline(cfg)
    if cfg.train.lora is not None and cfg.train.lora.kind != "lora":  # DoRA / LoHa / LoKr: merge the LyCORIS file
        from sdtune.models.loading import family_of_pipeline
        from sdtune.models.lycoris import LYCORIS_FILE, merge_comfyui

        left = merge_comfyui(pipe.unet, family_of_pipeline(pipe).text_of(pipe)[1], run_dir / "lora" / LYCORIS_FILE)
        if left:
            raise SdtuneError(f"{run_dir / 'lora' / LYCORIS_FILE}: {counted(len(left), 'key')} "
                              f"{plural(len(left), 'fits', 'fit')} no layer (first: {left[0]})")
        return write_folder(out, lambda tmp: save_pipeline(pipe, tmp))
    with reading_safetensors(run_dir / "lora" / LORA_WEIGHTS):  # a damaged file: one line naming it
        pipe.load_lora_weights(str(run_dir / "lora"), weight_name=LORA_WEIGHTS)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return write_folder(out, lambda tmp: save_pipeline(pipe, tmp))


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_json(run_dir / "metrics.json", metrics)


def _images_row(metrics: dict) -> str:
    """Distinct images, not examples: 4 photos repeated 25 times are 4 training images."""
    images, examples = metrics.get("images"), metrics.get("examples")
    if images and examples and examples != images:
        return f"{images} ({counted(examples, 'example')} per epoch with repeats)"
    return str(images if images is not None else examples)


def example_prompt(cfg: RunConfig) -> str:
    """A prompt the run was trained for: the instance prompt, a validation prompt, else a caption of its data."""
    if cfg.data.instance_prompt:
        return cfg.data.instance_prompt
    if cfg.validation.prompts:
        return cfg.validation.prompts[0]
    from sdtune.data.folders import read_folder
    from sdtune.data.subsets import subsets_from_config

    for subset in subsets_from_config(cfg.data):
        if subset.role != "train":
            continue
        if subset.prompt:
            return subset.prompt
        try:
            captions = [c for record in read_folder(subset.path).records for c in record.captions if c.strip()]
        except Exception:  # noqa: BLE001 - the card must be written even when the data moved away since
            captions = []
        if captions:
            return captions[0]
    return "a photo"


def usage_snippet(run_dir: Path, cfg: RunConfig, prompt: str, pipeline_class: str = "StableDiffusionPipeline"
                  ) -> list[str]:
    """Python lines that load the run's result and generate ``prompt``: runnable as pasted (strings quoted with
    ``repr``, built-in bases loaded through sdtune, the fused ``RUN/model`` when there is one)."""
    from sdtune.models.lora_variants import kind_of

    cls = pipeline_class
    lines = [f"from diffusers import {cls}", ""]
    model_dir = run_dir / "model"
    base = cfg.model.base
    if (model_dir / "model_index.json").is_file():
        fused = " (the base with this run's LoRA fused in)" if cfg.train.lora is not None else ""
        lines.append(f"pipe = {cls}.from_pretrained({str(model_dir)!r})  # full model{fused}")
    else:
        from sdtune.models.presets import is_preset

        if is_preset(base):
            lines = [f"from diffusers import {cls}",
                     f"from sdtune.models.presets import preset_path  # {base!r} is built into sdtune", "",
                     f"pipe = {cls}.from_pretrained(preset_path({base!r}))"]
        elif Path(base).is_file():
            lines.append(f"pipe = {cls}.from_single_file({base!r})")
        else:
            extra = "".join(f", {key}={value!r}" for key, value in (("revision", cfg.model.revision),
                                                                      ("variant", cfg.model.variant)) if value)
            lines.append(f"pipe = {cls}.from_pretrained({base!r}{extra})")
        if cfg.model.vae:  # the VAE the run trained with, in place of the base's
            lines[0] = f"from diffusers import AutoencoderKL, {cls}"
            if is_preset(cfg.model.vae) and not is_preset(base):
                lines.insert(1, "from sdtune.models.presets import preset_path")
            lines.append(f"pipe.vae = {_vae_call(cfg.model.vae, base)}")
        if cfg.train.lora is not None and not kind_of(cfg.train.lora).diffusers:
            # LoHa / LoKr: diffusers has no loader for them; merged as ComfyUI (and `sdtune generate`) merge the file
            from sdtune.models.lycoris import LYCORIS_FILE

            lines[1:1] = ["from sdtune.models.loading import family_of_pipeline",
                          "from sdtune.models.lycoris import merge_comfyui  # LoHa/LoKr: no diffusers loader"]
            lines.append(f"merge_comfyui(pipe.unet, family_of_pipeline(pipe).text_of(pipe)[1], "
                         f"{str(run_dir / 'lora' / LYCORIS_FILE)!r})")
        elif cfg.train.lora is not None:
            # weight_name given: diffusers 0.35 refuses a folder without it offline ("you must specify a weight_name")
            lines.append(f"pipe.load_lora_weights({str(run_dir / 'lora')!r}, weight_name={LORA_WEIGHTS!r})")
            if cfg.model.prediction_type:  # the LoRA trained another objective than the base's scheduler says
                lines.append("pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, "
                             f"prediction_type={cfg.model.prediction_type!r})")
    if cfg.train.textual_inversion is not None:
        lines += _embedding_lines(run_dir, cfg.train.textual_inversion.token, pipeline_class)
    return lines + [f"image = pipe({prompt!r}).images[0]", 'image.save("sample.png")']


def _tools_row(run_dir: Path, plain_lora: bool) -> str:
    """Where the run's adapter is for AUTOMATIC1111 and ComfyUI: a LoRA is exported to kohya's layout on demand; a
    DoRA / LoHa / LoKr run wrote its kohya/LyCORIS file (``RUN/lora/lycoris.safetensors``) while finishing."""
    if plain_lora:
        return f"`sdtune export {shlex.quote(str(run_dir))} --format kohya` writes the file they load"
    return ("copy `lora/lycoris.safetensors` (kohya/LyCORIS layout) to their LoRA folder (AUTOMATIC1111 `models/Lora`, "
            "ComfyUI `models/loras`)")


def _vae_call(vae: str, base: str) -> str:
    """``AutoencoderKL`` loading ``model.vae`` as training did (``sdtune.models.loading.load_vae``)."""
    from sdtune.models.presets import is_preset

    def ref(name: str) -> str:  # a str: from_single_file's config= refuses a Path
        return f"str(preset_path({name!r}))" if is_preset(name) else repr(name)

    if Path(vae).is_file():
        if Path(base).is_file():
            return f"AutoencoderKL.from_single_file({vae!r})"
        return f"AutoencoderKL.from_single_file({vae!r}, config={ref(base)}, subfolder='vae')"  # the base's config
    if is_preset(vae) or (Path(vae) / "vae" / "config.json").is_file():
        return f"AutoencoderKL.from_pretrained({ref(vae)}, subfolder='vae')"
    return f"AutoencoderKL.from_pretrained({vae!r})"


def _embedding_lines(run_dir: Path, token: str, pipeline_class: str) -> list[str]:
    """Loading the run's token: one call on SD; on SDXL one per text encoder (the diffusers documentation's way)."""
    file = str(run_dir / EMBEDDINGS_DIR / embedding_file_name(token))
    if "XL" not in pipeline_class:
        return [f"pipe.load_textual_inversion({file!r}, token={token!r})"]
    return ["from safetensors.torch import load_file", "", f"state = load_file({file!r})",
            f"pipe.load_textual_inversion(state['clip_l'], token={token!r}, text_encoder=pipe.text_encoder, "
            "tokenizer=pipe.tokenizer)",
            f"pipe.load_textual_inversion(state['clip_g'], token={token!r}, text_encoder=pipe.text_encoder_2, "
            "tokenizer=pipe.tokenizer_2)"]


def write_model_card(run_dir: Path, cfg: RunConfig, metrics: dict, pipeline_class: str = "StableDiffusionPipeline"
                     ) -> None:
    """RUN/README.md from the config and ``metrics`` (images / examples / class_images counts, steps, loss)."""
    from sdtune.models.lora_variants import kind_of

    data = cfg.data
    prompt = example_prompt(cfg)
    adapter = kind_of(cfg.train.lora) if cfg.train.lora is not None else None
    what = ""
    if adapter is not None and adapter.name != "lora":
        what = f" The adapter is a {adapter.label} ({adapter.about})" + (
            "." if adapter.diffusers else "; diffusers' `load_lora_weights` cannot load it: see *Use it*.")
    lines = [
        f"# {run_dir.name}",
        "",
        f"Trained with [sdtune](https://pypi.org/project/sdtune/): **{cfg.method}** on base model "
        f"`{cfg.model.base}`.{what}",
        "",
        "| | |",
        "|---|---|",
        f"| method | {cfg.method} |",
        f"| training images | {_images_row(metrics)} |",
        f"| steps | {metrics.get('steps')} |",
        f"| final loss | {metrics.get('final_loss')} |",
        f"| resolution | {data.resolution} |",
        f"| learning rate | {cfg.train.learning_rate} |",
        f"| mixed precision | {cfg.train.mixed_precision} |",
    ]
    if metrics.get("prediction_type"):
        lines.append(f"| prediction type | {metrics['prediction_type']} |")
    if cfg.is_pivotal:  # when each part trained: the run's phases, by step (sdtune.training.pivotal)
        from sdtune.training.pivotal import embedding_steps, lora_steps_held

        token_until = embedding_steps(cfg) or cfg.train.max_steps
        lines.append(f"| pivotal tuning | token steps 1-{token_until}, LoRA steps {lora_steps_held(cfg) + 1}-"
                     f"{cfg.train.max_steps} |")
    if data.masked_loss:  # what the loss counted: the masked part (and from which step)
        where = f"`{data.mask_dir}`" if data.mask_dir is not None else "each image's alpha channel"
        first = data.unmasked_steps(cfg.train.max_steps) + 1
        lines.append(f"| masked loss | masks from {where}, weight {data.mask_outside_weight:g} outside"
                     + (f", from step {first} (whole images before)" if first > 1 else "") + " |")
    if (attention := cfg.train.attention_loss) is not None:  # Break-A-Scene's term: the token's attention to the masks
        maps = metrics.get("attention_maps") or ("nearest 16x16" if attention.downscales is None else
                                                 f"{', '.join(map(str, attention.downscales))}x smaller")
        first = data.unmasked_steps(cfg.train.max_steps) + 1
        lines.append(f"| cross-attention loss | weight {attention.weight:g}, maps {maps}, steps {first}-"
                     f"{cfg.train.max_steps} |")
    if cfg.train.min_timestep or cfg.train.max_timestep is not None:  # a narrowed range changes what the run learned
        high = "the schedule's end" if cfg.train.max_timestep is None else cfg.train.max_timestep - 1
        lines.append(f"| timesteps trained | {cfg.train.min_timestep} to {high} |")
    if cfg.train.lora is not None and adapter is not None:
        lines.append(f"| adapter | {adapter.title} |")
        lines.append(f"| {adapter.label} rank / alpha | {cfg.train.lora.rank} / "
                     f"{cfg.train.lora.alpha or cfg.train.lora.rank} |")
        lines.append(f"| AUTOMATIC1111 / ComfyUI | {_tools_row(run_dir, adapter.name == 'lora')} |")
    if (learned := cfg.train.textual_inversion) is not None:
        word = Path(embedding_file_name(learned.token)).stem  # what AUTOMATIC1111 and ComfyUI call it: the file's stem
        start = (f"`{learned.initializer}`" if learned.initializer else
                 f"`{learned.token}` as the tokenizer read it before the token was added")
        lines.append(f"| learned token | `{learned.token}` (started from {start}) |")
        lines.append(f"| AUTOMATIC1111 / ComfyUI | copy `embeddings/{word}.safetensors` to their `embeddings/` folder; "
                     f"in the prompt write `{word}` (AUTOMATIC1111) or `embedding:{word}` (ComfyUI) where this card "
                     f"writes `{learned.token}`" + (
                         f"; or the kohya export alone (the token bundled in it): `<lora:NAME:1> {learned.token}` in "
                         "AUTOMATIC1111 (ComfyUI reads no bundle: the embedding file as above)"
                         if cfg.train.lora is not None and cfg.train.lora.kind == "lora" else "") + " |")
    if data.instance_prompt:
        lines.append(f"| instance prompt | `{data.instance_prompt}` |")
    if data.with_prior_preservation:
        lines.append(f"| class images | {metrics.get('class_images')} |")
        lines.append(f"| class prompt | `{data.class_prompt}` (prior loss weight {data.prior_loss_weight}) |")
    if (keep := cfg.train.preservation) is not None:  # output preservation: what it kept, how strongly
        kept = keep.resolved_prompts(data)
        lines.append(f"| output preservation | weight {keep.weight:g} on {counted(len(kept), 'prompt')}: "
                     f"{first_few([f'`{p}`' for p in kept], 3)} |")
    if cfg.train.ema is not None:
        lines.append(f"| EMA | decay {cfg.train.ema.decay:g}: the saved weights are the average |")
    if cfg.train.snr_gamma is not None or cfg.train.noise_offset:
        lines.append(f"| loss options | min-SNR-gamma {as_written(cfg.train.snr_gamma)}, noise offset "
                     f"{cfg.train.noise_offset:g} |")
    resumes = [f"step {entry['step']}: " + ", ".join(f"{key} {as_written(old)} -> {as_written(new)}"
                                                   for key, (old, new) in changes.items())
               for entry in metrics.get("history") or [] if (changes := entry.get("changes"))]
    if resumes:
        lines.append(f"| resumed with changes | {'; '.join(resumes)} |")
    if cfg.model.vae:
        lines.append(f"| VAE | `{cfg.model.vae}` |")
    lines += ["", "## Use it", "", "```python", *usage_snippet(run_dir, cfg, prompt, pipeline_class), "```", "",
              "Or from the shell:", "", "```sh", f"sdtune generate {shlex.quote(str(run_dir))} --prompt "
              f"{shlex.quote(prompt)}", "```", "",
              "Resume state is in `checkpoints/`, the exact config in `config.yaml`.", ""]
    atomic_write_text(run_dir / "README.md", "\n".join(lines))
