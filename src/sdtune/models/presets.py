"""Built-in models that need no download.

``tiny`` is a randomly initialised Stable Diffusion (UNet, VAE, CLIP text encoder, tokenizer) small enough
to train on a CPU in seconds. It is built in code with a fixed seed, so every process and every session gets
bitwise the same weights, and written once to a cache folder so that it is then loaded through the same
``from_pretrained`` path as a real model. ``tiny-v`` is the same model with a v-prediction scheduler,
like SD 2.x at 768 px. ``tiny-xl`` is a random tiny SDXL (two CLIP text encoders, the second with a projection,
and a UNet with SDXL's ``text_time`` added conditioning), built the same way.

``toy`` is different: a *pretrained* small Stable Diffusion that ships inside the package (``assets/toy``),
built by ``sdtune toy pretrain`` on the toy world of coloured shapes (see ``sdtune.toy``). It knows something,
so fine-tuning it can be measured.

``real-sd15``, ``real-sd2-base`` and ``real-sd2-768`` have the real architecture of the checkpoints the ready
configs name, with seeded random weights (``sdtune.models.real``): for shape checks and GPU memory/speed
measurements without a download. They are built like ``tiny``, once, into the cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sdtune.atomic import umask_mode
from sdtune.models.real import REAL_VERSION
from sdtune.models.tiny_tokenizer import build_tiny_tokenizer
from sdtune.preset_names import PRESETS, REAL_PRESETS

PRESET_VERSION = 1

TINY_RESOLUTION = 32  # pixels; the VAE halves it once, so latents are 16x16


def cache_root() -> Path:
    """Where built-in models are materialised (``SDTUNE_CACHE`` overrides ``~/.cache/sdtune``)."""
    env = os.environ.get("SDTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sdtune"


def is_preset(name: str) -> bool:
    return name in PRESETS


def toy_path() -> Path:
    """The shipped toy model: ``pipeline/`` (diffusers), ``clip/`` (its CLIP, for evaluation), ``judge/``."""
    return Path(__file__).resolve().parent.parent / "assets" / "toy"


def preset_path(name: str) -> Path:
    """Return the folder of a built-in model, building it on first use."""
    if name not in PRESETS:
        raise KeyError(name)
    if name == "toy":
        folder = toy_path() / "pipeline"
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"the toy model is missing from {folder}; rebuild it with `sdtune toy pretrain`")
        return folder
    version = REAL_VERSION if name in REAL_PRESETS else PRESET_VERSION
    target = cache_root() / f"{name}-v{version}"
    if (target / "model_index.json").exists():
        return target
    check_preset_cache(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name in REAL_PRESETS:
            from sdtune.models.real import write_real_preset

            shared = REAL_PRESETS[name][1]
            write_real_preset(name, staging, shared_from=preset_path(shared) if shared else None)
        elif name == "tiny-xl":
            build_tiny_xl_pipeline().save_pretrained(staging, safe_serialization=True)
        else:
            build_tiny_pipeline(v_prediction=(name == "tiny-v")).save_pretrained(staging, safe_serialization=True)
        umask_mode(staging)  # mkdtemp makes a 0700 folder, save_file 0600 files
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def check_preset_cache(name: str) -> None:
    """Refuse in one line when the built-in model ``name`` is not built yet and its cache cannot be written.

    Commands call it before anything else loads (and :func:`preset_path` before building), so an unwritable
    ``SDTUNE_CACHE`` is named instead of ending a run in a ``PermissionError`` traceback.
    """
    if name not in PRESETS or name == "toy":
        return
    version = REAL_VERSION if name in REAL_PRESETS else PRESET_VERSION
    if (cache_root() / f"{name}-v{version}" / "model_index.json").exists():
        return
    from sdtune.writable import check_writable

    check_writable(cache_root(), "SDTUNE_CACHE", f"the built-in model '{name}' is built there on first use; set "
                   "SDTUNE_CACHE to a writable folder or fix its permissions")


def _tiny_unet(**extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_RESOLUTION // 2, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, **extra)


def _tiny_vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), sample_size=TINY_RESOLUTION,
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), **extra)


def _tiny_clip_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, intermediate_size=64, num_attention_heads=4,
                          num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=77, **extra)


def _tiny_scheduler(cls_name: str = "DDIMScheduler", prediction_type: str = "epsilon"):
    import diffusers

    extra = {"clip_sample": False, "set_alpha_to_one": False} if cls_name == "DDIMScheduler" else {}
    return getattr(diffusers, cls_name)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        steps_offset=1, prediction_type=prediction_type, **extra)


def build_tiny_xl_pipeline():
    """The random tiny SDXL (deterministic: seeded): 32 + 32 wide text encoders (cross-attention 64), pooled 32,
    6 time ids x 8 (projection input 32 + 48 = 80), SDXL's linear projections and per-block transformer depth."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = _tiny_unet(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                          addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                          projection_class_embeddings_input_dim=80, cross_attention_dim=64)
        vae = _tiny_vae(force_upcast=True)
        text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer, hidden_size=32, projection_dim=32,
                                                       hidden_act="quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(tokenizer_2, hidden_size=32,
                                                                       projection_dim=32, hidden_act="gelu"))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=_tiny_scheduler("EulerDiscreteScheduler"),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def build_tiny_pipeline(v_prediction: bool = False):
    """Build the random tiny Stable Diffusion pipeline (deterministic: seeded)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=8)
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_tiny_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    scheduler = _tiny_scheduler("DDIMScheduler", "v_prediction" if v_prediction else "epsilon")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
