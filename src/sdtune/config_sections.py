"""The sections of a run's schema (``model:``, ``data:``, ``train:``, ...), each with its typed defaults and the rules
inside one section; ``sdtune.config`` combines them into ``RunConfig`` (rules across sections, YAML, overrides) and
re-exports them, so ``from sdtune.config import DataConfig`` is how they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sdtune.config_base import Section
from sdtune.config_loss_terms import AttentionLossConfig, PreservationConfig
from sdtune.preset_names import PRESETS
from sdtune.words import counted


def _no_empty_path(value: Any) -> Any:
    """An empty path (``output_dir=`` on the command line) would mean the current folder: never what was meant."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty (it would mean the current folder): give a folder, e.g. runs/me")
    return value


class FrozenAdapter(Section):
    """A LoRA applied to the base model, unfused and frozen, below the LoRA a run trains (a concept kept as an
    adapter: the stack base + concept + person is then what training sees, and generation loads it the same)."""

    path: Path = Field(description="a LoRA .safetensors (diffusers format) or a run folder with lora/")
    weight: float = Field(1.0, description="its scale")
    name: str = Field("frozen", pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="its adapter name")


class ModelConfig(Section):
    base: str = Field("tiny", description="hub id, local diffusers folder, single .safetensors file, or a built-in "
                      f"model ({', '.join(PRESETS)})")
    revision: str | None = None
    variant: str | None = Field(None, description="weights variant, e.g. fp16")
    allow_pickle: bool = Field(False, description="allow .bin/.ckpt weights (pickle can run code: trusted only)")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="override the scheduler's prediction type (default: the model's own)"
    )
    vae: str | None = Field(None, description="a VAE to use instead of the model's (folder, file or hub id), e.g. "
                            "madebyollin/sdxl-vae-fp16-fix: SDXL's own VAE stays fp32 under fp16, an fp16-safe one "
                            "need not")
    adapters: list[FrozenAdapter] = Field(default_factory=list, description="LoRAs applied unfused and frozen "
                                          "below the trained one (LoRA runs)")

    @model_validator(mode="after")
    def _adapter_names(self) -> ModelConfig:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names) or "default" in names:
            raise ValueError("model.adapters need distinct names, other than 'default' (the trained LoRA's)")
        return self


class SubsetConfig(Section):
    """One source of training examples (DESIGN.md: methods differ by data, not by loop)."""

    path: Path = Field(description="folder of images (with metadata.jsonl or .txt captions when captioned)")
    prompt: str | None = Field(None, description="fixed prompt for every image; None = each image's caption")
    repeats: int = Field(1, ge=1, description="times this subset is seen per epoch (1: once; raise it for a "
                         "small subset beside a large one)")
    loss_weight: float = Field(1.0, ge=0.0, description="this subset's weight in the loss (1: as the others; 0: "
                               "seen but not learned)")
    role: Literal["train", "class"] = Field(
        "train", description="'class' subsets are paired with train examples for prior preservation"
    )
    class_prompts: list[str] = Field(
        default_factory=list, description="class subsets: generate missing images from these prompts with the "
        "run's base model (image i: prompt i mod len, seed i; captions in metadata.jsonl)")
    num_images: int | None = Field(None, ge=1, description="class subsets with class_prompts: images to have")

    @model_validator(mode="after")
    def _generation(self) -> SubsetConfig:
        if self.class_prompts:
            if self.role != "class":
                raise ValueError("class_prompts is for subsets with role: class (images generated for prior "
                                 "preservation)")
            if self.num_images is None:
                raise ValueError("a subset with class_prompts needs num_images (how many images to generate)")
            if self.prompt is not None:
                raise ValueError("a subset with class_prompts is captioned by them; remove its prompt")
        return self

    @field_validator("path", mode="before")
    @classmethod
    def _path_given(cls, value: Any) -> Any:
        return _no_empty_path(value)


class DataConfig(Section):
    # Text-to-image: a captioned folder (imagefolder with metadata.jsonl, or images with .txt sidecars).
    train_dir: Path | None = None
    # DreamBooth: instance images with one fixed prompt, optional class images for prior preservation.
    instance_dir: Path | None = None
    instance_prompt: str | None = None
    class_dir: Path | None = Field(None, description="class images (one folder per model, prompt and resolution: "
                                   "missing ones are generated, class_images.json records what made them)")
    class_prompt: str | None = None
    with_prior_preservation: bool = False
    prior_loss_weight: float = Field(1.0, ge=0.0, description="weight of the class images' loss (prior "
                                     "preservation; 1 as in the DreamBooth paper, 0: off)")
    num_class_images: int = Field(100, ge=1, description="class images to have; missing ones are generated")
    class_generation_steps: int = Field(30, ge=1, description="denoising steps per generated class image")
    # Any further subsets (several concepts in one run).
    subsets: list[SubsetConfig] = Field(default_factory=list)
    repeats: int = Field(1, ge=1, description="repeats of train_dir / instance_dir")

    resolution: int = Field(512, ge=8, description="training size in px: a multiple of 8, and with buckets at least "
                            "the model's bucket step (64 on SD)")
    center_crop: bool = True
    random_flip: bool = False
    caption_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="probability of an empty prompt (for CFG)")
    check: bool = Field(True, description="check the dataset before loading the model; stop on errors")
    buckets: bool = Field(True, description="aspect-ratio buckets: each image trains at about resolution² pixels in "
                          "the shape nearest its own (sides multiples of 64 px on SD), cropped only by the rounding; "
                          "false = every image centre/random-cropped to the resolution square")
    cache_latents: bool = Field(True, description="encode each image variant (bucket, flip) with the VAE once and "
                                "reuse it (bitwise the same training); off by itself with random crops "
                                "(center_crop=false)")
    cache_text: bool = Field(True, description="encode each distinct prompt once when the text encoder is frozen "
                             "(bitwise the same training)")
    cache_dir: Path | None = Field(None, description="where cached latents/embeddings go (default: "
                                   "$SDTUNE_CACHE/features or ~/.cache/sdtune/features; shared by every run)")
    masked_loss: bool = Field(False, description="weight the loss by a mask per training image (sdtune.data."
                              "masks): data.mask_dir, else the image's alpha channel")
    mask_dir: Path | None = Field(None, description="masks named as the training images (me1.png for me1.jpg); "
                                  "white = the loss counts")
    mask_outside_weight: float = Field(0.0, ge=0.0, le=1.0, description="the loss weight where the mask is black "
                                       "(0: only the masked part is learned)")
    mask_start: float = Field(0.0, ge=0.0, lt=1.0, description="weight the loss by the masks from this fraction "
                              "of train.max_steps on (whole images before); with pivotal tuning in sequence set it "
                              "to train.textual_inversion.lora_start: the token learns from whole images, the "
                              "LoRA from the masked person (train.attention_loss then reaches the LoRA alone: keep "
                              "it below ti_fraction for the token); below 1 (whole images throughout: "
                              "data.masked_loss false)")

    def unmasked_steps(self, max_steps: int) -> int:
        """The first optimizer steps that train on whole images before the masks apply (``mask_start``)."""
        return round(self.mask_start * max_steps) if self.masked_loss else 0

    @field_validator("train_dir", "instance_dir", "class_dir", "mask_dir", mode="before")
    @classmethod
    def _paths_given(cls, value: Any) -> Any:
        return _no_empty_path(value)

    @field_validator("resolution")
    @classmethod
    def _whole_latent_pixels(cls, value: int) -> int:
        # The pipelines (validation images, class images, generate) refuse sizes not divisible by 8, and the VAE
        # of every real family works in 8-pixel blocks: refused here, not after the first training steps.
        if value % 8:
            raise ValueError(f"{value} is not a multiple of 8 (Stable Diffusion's VAE and pipelines work in 8-pixel "
                             f"blocks): use {value - value % 8 or 8} or {value - value % 8 + 8}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.train_dir is None and self.instance_dir is None and not self.subsets:
            raise ValueError("no training data: set data.train_dir (captioned), data.instance_dir (DreamBooth) "
                             "or data.subsets")
        if self.mask_start > 0.0 and not self.masked_loss:
            raise ValueError("data.mask_start is set but data.masked_loss is false: set data.masked_loss=true (or "
                             "remove data.mask_start)")
        if self.mask_dir is not None and not self.masked_loss:
            raise ValueError("data.mask_dir is set but data.masked_loss is false: set data.masked_loss=true to "
                             "weight the loss by the masks (or remove data.mask_dir)")
        if self.instance_dir is not None and not self.instance_prompt:
            raise ValueError("data.instance_dir needs data.instance_prompt (e.g. 'a photo of sks person')")
        if self.with_prior_preservation:
            if self.instance_dir is None:
                raise ValueError("data.with_prior_preservation needs data.instance_dir (DreamBooth)")
            if not self.class_prompt or self.class_dir is None:
                raise ValueError(
                    "data.with_prior_preservation needs data.class_prompt (e.g. 'a photo of a person') "
                    "and data.class_dir (missing class images are generated there)"
                )
        return self


class LoraConfig(Section):
    kind: Literal["lora", "dora", "loha", "lokr"] = Field(
        "lora", description="lora; dora (weight-decomposed); loha (Hadamard product); lokr (Kronecker product), "
        "all through peft: docs/training-options.md")
    rank: int = Field(8, ge=1, description="LoRA rank: 4-32 for a person or a style, more for a broad concept")
    alpha: float | None = Field(None, description="scale numerator; default = rank (scale 1)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout: the share of the adapter's inputs "
                           "zeroed while training (0: off; 0.1 is common)")
    targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    text_encoder_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    lokr_factor: int = Field(-1, description="kind lokr: the Kronecker factor size (-1: as square as the layer allows)")


class EMAConfig(Section):
    decay: float = Field(0.9999, gt=0.0, lt=1.0, description="EMA decay per step: nearer 1 averages over more "
                         "steps (0.999 ~ the last 1000)")
    update_after_step: int = Field(0, ge=0, description="steps before the EMA starts averaging")


class TextualInversionConfig(Section):
    """Textual inversion (``sdtune.models.embeddings``): a new token whose embedding is all the run trains; the
    model is untouched, so nothing it drew before changes. Saved as RUN/embeddings/<token>.safetensors."""

    token: str = Field(min_length=1, description="the new token, as prompts write it (e.g. sks or <sks>); "
                       "instance prompts and captions must contain it")
    initializer: str | None = Field(None, description="text whose embedding the token starts from (default: the "
                                    "token as the tokenizer read it before, e.g. the rare word sks)")
    norm_limit: float | None = Field(None, gt=0.0, description="cap the token's embedding norm at this multiple "
                                     "of the vocabulary's longest embedding (an unbounded one grows until it "
                                     "outweighs the prompt's other words); null = no cap")
    num_vectors: int = Field(1, ge=1, le=16, description="embedding vectors per token (AUTOMATIC1111's vectors "
                             "per token; diffusers adds them as token, token_1, ...)")
    learning_rate: float | None = Field(None, gt=0.0, description="the embedding's own learning rate (default: "
                                        "train.learning_rate); with train.lora this is pivotal tuning")
    ti_fraction: float = Field(1.0, gt=0.0, le=1.0, description="train the embedding for this fraction of the "
                               "steps, then freeze it while the LoRA trains on (pivotal tuning: needs train.lora)")
    lora_start: float = Field(0.0, ge=0.0, lt=1.0, description="the LoRA starts after this fraction of the steps "
                              "(the token alone before it: inversion first, then the LoRA around the pivot, as "
                              "cloneofsimo's lora_pti does); 0: both from the first step (diffusers' advanced "
                              "scripts); below 1 (the token alone for every step is textual inversion: leave out "
                              "train.lora)")

    @field_validator("token")
    @classmethod
    def _one_word(cls, token: str) -> str:
        """One word, as prompts write it; and no '.': AUTOMATIC1111 reads the token bundled in a kohya LoRA file from
        the key ``bundle_emb.<token>.<part>`` up to its first '.', so a token with one would load under another name
        (or not at all)."""
        if any(c.isspace() for c in token) or not token:
            raise ValueError(f"{token!r}: a token is one word, without spaces (prompts write it as one), e.g. "
                             f"{'_'.join(token.split()) or '<sks>'!r}")
        if "." in token:
            raise ValueError(f"{token!r} has a '.': AUTOMATIC1111 reads a token bundled in a LoRA file up to its first "
                             f"'.', so it would not find it; write it without one, e.g. "
                             f"{token.replace('.', '_')!r}")
        return token

    def token_steps(self, max_steps: int) -> int | None:
        """The first optimizer steps the token trains for (``ti_fraction`` of them, at least 1); None: every step.
        The one rounding of the phases: training (``sdtune.training.pivotal``), the checks below and resume."""
        return None if self.ti_fraction >= 1.0 else max(1, round(self.ti_fraction * max_steps))

    def lora_held_steps(self, max_steps: int) -> int:
        """The first optimizer steps a LoRA beside the token waits for (``lora_start`` of them; 0: none)."""
        return round(self.lora_start * max_steps)


def _check_pivotal_phases(learned: TextualInversionConfig, max_steps: int) -> None:
    """The LoRA must train at least one step, and no step may train nothing (the LoRA starting after the token
    froze)."""
    held = learned.lora_held_steps(max_steps)
    if learned.lora_start > 0.0 and held == 0:
        raise ValueError(f"train.textual_inversion.lora_start={learned.lora_start} of "
                         f"{counted(max_steps, 'step')} (train.max_steps) holds the LoRA back for no step, so the "
                         "token and the LoRA would train together: raise max_steps, or set lora_start to 0")
    if learned.ti_fraction < 1.0 and learned.token_steps(max_steps) == max_steps:
        raise ValueError(f"train.textual_inversion.ti_fraction={learned.ti_fraction} of "
                         f"{counted(max_steps, 'step')} (train.max_steps) rounds to all of them, so the token "
                         "never freezes: raise max_steps or lower ti_fraction (1 trains it throughout)")
    if held >= max_steps:
        raise ValueError(f"train.textual_inversion.lora_start={learned.lora_start} holds the LoRA back for all "
                         f"{counted(max_steps, 'step')} (train.max_steps): lower it")
    token = learned.token_steps(max_steps) or max_steps
    if held > token:
        raise ValueError(f"train.textual_inversion.lora_start={learned.lora_start} starts the LoRA at step "
                         f"{held + 1}, after the token's last step {token} (ti_fraction={learned.ti_fraction}): "
                         f"steps {token + 1}-{held} would train nothing; set lora_start to at most ti_fraction")


class TrainConfig(Section):
    lora: LoraConfig | None = Field(None, description="LoRA settings; absent = full fine-tuning")
    textual_inversion: TextualInversionConfig | None = Field(
        None, description="train a new token's embedding: alone (textual inversion) or with train.lora (pivotal "
        "tuning)")
    train_text_encoder: bool = False
    learning_rate: float = Field(1e-4, gt=0.0, description="peak learning rate (LoRA: 1e-4 to 1e-3; full "
                                 "fine-tuning: 1e-6 to 5e-6)")
    text_encoder_lr: float | None = Field(None, gt=0.0, description="the text encoder's learning rate "
                                          "(null: train.learning_rate)")
    scale_lr: bool = False
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adamw_schedulefree", "adafactor"] = Field(
        "adamw", description="adamw; adamw8bit (CUDA); prodigy (learning_rate 1.0); adamw_schedulefree (constant "
        "schedule); adafactor. Rates that fit each: docs/training-options.md")
    optimizer_args: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="further keyword arguments of the optimizer's class, e.g. "
        "{d_coef: 0.5, safeguard_warmup: true} for prodigy")
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0, description="steps the learning rate rises from 0 to its peak")
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(1, ge=1, description="examples per process per micro-step (class images add more)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="batches summed per optimizer step "
                                             "(effective batch = batch_size x this x processes)")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping norm (null: no "
                                           "clipping)")
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="no, fp16 or bf16 (float16, bfloat16, fp32 and float32 are read as these)")
    snr_gamma: float | None = Field(None, gt=0.0, description="min-SNR-gamma loss weighting (5.0 is common)")
    noise_offset: float = Field(0.0, ge=0.0, description="offset noise for darker darks and brighter "
                                "lights (0: off; 0.05-0.1 is common)")
    min_timestep: int = Field(0, ge=0, description="train on timesteps from this one (kohya's --min_timestep): "
                              "low timesteps are the little-noise steps that draw detail, texture and colour")
    max_timestep: int | None = Field(None, ge=1, description="train on timesteps below this one (kohya's "
                                     "--max_timestep; null: the noise schedule's length, 1000 for SD): high "
                                     "timesteps draw the layout and form")
    ema: EMAConfig | None = Field(None, description="EMA of the trained weights (the UNet, a LoRA, a token's "
                                  "embedding): what is validated, saved and exported; the raw ones resume")
    attention_loss: AttentionLossConfig | None = Field(
        None, description="Break-A-Scene's cross-attention loss: the learned token attends to the masked person "
        "(needs train.textual_inversion and data.masked_loss)")
    preservation: PreservationConfig | None = Field(
        None, description="differential output preservation: pull the trained model's prediction on prompts "
        "without the identifier towards the starting model's (LoRA only; no class images needed)")
    seed: int = 42
    num_workers: int = Field(0, ge=0, description="data loader worker processes (0: load in the training "
                             "process)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _precision_spelling(cls, value: Any) -> Any:
        """Dtype names as ``generate --dtype`` spells them mean the same here (``float16`` = ``fp16``)."""
        spelled = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "no", "fp32": "no"}
        return spelled.get(value.strip().lower(), value) if isinstance(value, str) else value

    @property
    def trains_text(self) -> bool:
        """Gradients flow through the text encoder (it trains, or a learned token does): no text cache."""
        return self.train_text_encoder or self.textual_inversion is not None

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        from sdtune.config_options import check_train_options

        check_train_options(self)  # the newer options' combinations (optimizers, LoRA kinds, EMA), one table
        if self.textual_inversion is not None:
            clash = [key for key, on in (("train.train_text_encoder", self.train_text_encoder),) if on]
            if clash:
                raise ValueError(f"train.textual_inversion trains a token's embedding (with train.lora: pivotal "
                                 f"tuning); remove {' and '.join(clash)} (or remove train.textual_inversion)")
            if self.lora is None and self.textual_inversion.lora_start > 0.0:
                raise ValueError("train.textual_inversion.lora_start holds a LoRA back until the token is learned "
                                 "(pivotal tuning): add train.lora, or set lora_start to 0")
            if self.lora is not None:
                _check_pivotal_phases(self.textual_inversion, self.max_steps)
            if self.lora is None and self.textual_inversion.ti_fraction < 1.0:
                raise ValueError("train.textual_inversion.ti_fraction freezes the embedding while a LoRA trains on "
                                 "(pivotal tuning): add train.lora, or set ti_fraction to 1.0")
        if self.attention_loss is not None and self.textual_inversion is None:
            raise ValueError("train.attention_loss pulls a learned token's attention towards the masks: add "
                             "train.textual_inversion (with train.lora: pivotal tuning), or remove attention_loss")
        if self.max_timestep is not None and self.max_timestep <= self.min_timestep:
            raise ValueError(f"train.max_timestep={self.max_timestep} must be above train.min_timestep="
                             f"{self.min_timestep} (timesteps from min_timestep to max_timestep - 1 are trained)")
        if self.lr_warmup_steps and self.lr_scheduler == "constant" and self.optimizer != "adamw_schedulefree":
            raise ValueError(f"train.lr_warmup_steps={self.lr_warmup_steps} has no effect with "
                             "train.lr_scheduler=constant: use constant_with_warmup, or set lr_warmup_steps=0")
        if self.lr_warmup_steps >= self.max_steps and self.lr_scheduler != "constant":
            raise ValueError(f"train.lr_warmup_steps={self.lr_warmup_steps} must be smaller than train.max_steps="
                             f"{self.max_steps} (the {self.lr_scheduler} schedule warms up, then runs the rest of "
                             "the steps): lower lr_warmup_steps or raise max_steps")
        return self
