"""What the demo trains and evaluates with (:class:`DemoSettings`), apart from how it runs them
(:mod:`sdtune.toy.demo`): ``benchmarks/two_stage.py`` and :mod:`sdtune.toy.demo_eval` read the same settings, and
neither needs the demo's runner to do so (one settings source, no import circle)."""

from __future__ import annotations

from dataclasses import dataclass

from sdtune.toy.finetune import LORA_RANK


@dataclass
class DemoSettings:
    """Everything the demo (and ``benchmarks/two_stage.py``, which runs it over seeds and variants) trains with.

    The person-stage fields are the options measured for keeping the concept through the person stage; their
    numbers are in docs/two-stage.md ("Keeping the concept")."""

    concept_images: int = 24
    # The share of the concept's arrows drawn two-tone (checkered or striped, never the person's own look), as a
    # thumbs-up set shows many different people: with solid arrows only the concept model drew "a photo of a red
    # and cyan striped arrow" as a striped arrow in 4-11 of 16 images and the composite failed on 2 of 3 seeds
    # (0.21 mean); with half two-tone it was 0.88 on every seed, 0.25 gave 0.46 (benchmark, 6 Dec 2026).
    concept_two_tone: float = 0.5
    # The person photographed in 4 shapes ("poses"), each photo captioned with its shape ("a photo of sks red
    # circle"): the identifier then stands for what every photo shares, the stripes and colours, and the concept's
    # form can carry them (the composite). With one shape (DreamBooth's one fixed prompt) "sks" took the square's
    # form too, and "a photo of sks red arrow" drew no striped arrow in any variant (docs/two-stage.md).
    person_images: int = 8
    person_poses: int = 4
    # Whose photos: "striped" (red and cyan stripes, words the base knows: world.PERSON) or "halved" (green over
    # purple halves of the shape, a look no words of the toy world draw, as no words draw a real face:
    # world.HARD_PERSON). Both share token, poses and caption templates.
    person_look: str = "striped"
    # Masked loss on the person's photos (data.masked_loss): the loss counts on the shape's silhouette (written
    # beside the photos as "<photos>-masks", world.write_masks), person_mask_outside elsewhere
    person_masks: bool = False
    person_mask_outside: float = 0.0
    person_mask_start: float = 0.0  # data.mask_start: whole images before this share of the steps, masks after
    # Break-A-Scene's cross-attention loss (train.attention_loss; needs person_masks and a learned token): its weight
    # (0: off) and the maps it reads, as times smaller than the 8x8 latents (the toy's attention: 4x4 and 2x2)
    person_attention_loss: float = 0.0
    person_attention_downscales: tuple[int, ...] = (2,)
    # train.max_timestep of the person stage (None: every timestep): the person on the low-noise steps only, where
    # detail and colour are drawn, so the form of "sks green arrow" stays the concept's
    person_max_timestep: int | None = None
    # 600 concept steps: concept 0.94 but old-prompt accuracy 0.92 -> 0.60, and no person learned on top;
    # 300: 0.81 and 0.73 (measured). LoRA on attention, convs and feed-forwards (finetune.LORA_TARGETS).
    concept_steps: int = 300
    concept_lora: bool = True
    concept_lr: float = 1e-3
    concept_rank: int = LORA_RANK
    # Stage 1 costs old-prompt accuracy 0.96 -> 0.72; lower lr, rank, steps, caption dropout, output preservation
    # and a key/value-only LoRA were measured against it (docs/two-stage.md, "Stage 1: what keeps the old world"):
    # none kept 0.88 with concept >= 0.75, so these stay as they were
    concept_caption_dropout: float = 0.1  # share of concept captions dropped to "" (data.caption_dropout)
    concept_targets: str = "all"  # the concept LoRA's layers: "all" (finetune.LORA_TARGETS) or "kv" (Custom Diffusion)
    # Output preservation in stage 1 (train.preservation): keep the base's prediction on this many of the world's
    # other prompts (evaluate.generic_prompts, none of them an evaluated one) at this weight; 0: off
    concept_preservation: float = 0.0
    concept_preservation_prompts: int = 12
    # Prior preservation in stage 1: this many class images of the world's other prompts (evaluate.generic_prompts,
    # concept_class_prompts of them, none evaluated), drawn by the base model, trained beside the concept images at
    # concept_class_weight (replay of what the base drew; 0: off). Unlike output preservation it gives the other
    # prompts their own images, not the arrow images' noisy latents under another prompt.
    concept_class_images: int = 0
    concept_class_prompts: int = 24
    concept_class_weight: float = 1.0
    # Only the world's prompts of these shapes in that prior (all of them; () = concept_class_prompts spread over
    # every shape): the shapes whose words lie nearest "arrow" in the toy CLIP (star 0.75, diamond 0.54 cosine) are
    # the ones stage 1 bends into arrows (seed 0: its old prompts of stars and diamonds right in 8 of 24 images,
    # the base's in 22)
    concept_class_shapes: tuple[str, ...] = ()
    # A text-encoder LoRA in stage 1 too (train.train_text_encoder): "arrow" can then move away from "star" in the
    # text encoder, where the UNet LoRA alone must draw both from nearly the same embedding
    concept_text_encoder: bool = False
    # Stage 1 by pivotal tuning: a new token for the concept (its captions and prompts write it for "arrow"),
    # learned beside the LoRA at concept_token_lr from concept_token_init's embedding (None: the token's own
    # pieces). The frozen text encoder gives "arrow" nearly star's embedding; a token of its own can move away, so
    # the LoRA that draws arrows for it need not draw them for stars. None: the word "arrow". Measured on seed 0
    # (docs/two-stage.md): old acc 0.69-0.71 against the word's 0.75 - diamonds still turn into arrows, so the
    # spill is the UNet LoRA's, not the word's. A stage 1 with a token saves no fused model (screens only).
    concept_token: str | None = None
    concept_token_init: str | None = None
    concept_token_lr: float = 1e-2
    # The person stage is pivotal tuning in sequence (person_method "pivotal", person_lora_start 0.5): the token
    # "sks" alone first (400 steps at person_ti_lr 2e-2, as textual inversion), then a LoRA around the frozen token
    # (400 steps, rank 16 on the finer levels, lr 1e-3, output preservation 4). The one person method of the demo,
    # configs/two-stage.yaml, configs/sdxl-two-stage.yaml and personalize (issue #23; docs/two-stage.md, "One person
    # method"), measured on both toy persons over three seeds: the only one that learns the person words can draw
    # in the concept's form (composite 0.82 +- 0.31 at rank 4) and the one they cannot (person 0.46 +- 0.21; rank 16
    # and preservation 4: 0.79 and 0.68). Textual inversion alone: 0.88 and 0.00; both at once (lora_start 0): 0.00
    # and 0.62; the DreamBooth LoRA: 0.00, 0.07.
    person_steps: int = 800  # (textual inversion: 400; a LoRA person: 250)
    person_lr: float = 1e-3  # the LoRA's (textual inversion: the token's, 2e-2; a LoRA person: 2e-3)
    # rank 16 with output preservation 4 (below): the hard person 0.68 +- 0.19 against rank 4's 0.46 +- 0.21, the
    # easy composite kept (0.79 +- 0.33 against 0.82 +- 0.31), the hard class prompt plain in 0.86 (0.96); rank 16
    # at preservation 2: hard person 0.74 but easy composite 0.67, class plain 0.76 (docs/two-stage.md, 3 seeds)
    person_rank: int = 16
    # "fine": LoRA only on the UNet's finer levels (finetune.FINE_LEVELS), which change texture and colour more
    # than form; "all"; "kv": only the cross-attention keys and values (Custom Diffusion)
    person_targets: str = "fine"
    person_on: str = "model"  # (c) "adapter": on the base with the concept LoRA as a frozen, unfused adapter
    # "pivotal": the token's embedding (person_ti_lr, frozen after person_ti_fraction of the steps) and a LoRA
    # (person_lr, rank, targets, preservation) in one run (sdtune.training.pivotal); "textual-inversion": only the
    # embedding of a new token "sks" trains (the model is untouched; person_steps / person_lr / person_batch apply,
    # person_rank / person_targets / preservation / prior do not); "lora": a DreamBooth LoRA of the person
    person_method: str = "pivotal"
    person_batch: int = 8
    person_norm_limit: float | None = None  # the token: train.textual_inversion.norm_limit
    person_initializer: str | None = None  # the token: the text it starts from (None: "sks")
    person_ti_lr: float = 2e-2
    person_vectors: int = 1  # the token's embedding vectors (train.textual_inversion.num_vectors; the configs use 2)
    person_ti_fraction: float = 0.5
    person_lora_start: float = 0.5  # pivotal: the LoRA starts after this share of the steps (the token alone first)
    # (With the first person a text-encoder LoRA helped, as DreamBooth users find for faces: on the base model,
    # person 0.50 of images (pixel check) and class prompt intact 0.29, against 0.38 and 0.04 without.)
    # Off since the striped person: the text-encoder LoRA changes every prompt's embedding, the old world's too
    # (old-prompt accuracy 0.19 below stage 1 without it, 0.33 with it; person 1.00 vs 0.83; benchmark, 29 Nov 2026)
    person_text_encoder: bool = False
    # How the person stage keeps the class prompt and the concept (docs/two-stage.md, "Keeping the concept", has
    # every option's numbers over three seeds): differential output preservation on the class prompt and the
    # concept's own prompts, no class images.
    prior: bool = False  # prior preservation with class images of the class prompt ("a photo of a red square")
    class_images: int = 12
    concept_prior: int = 0  # (a) also class images of the concept stage's prompts, drawn by the concept model
    # (b) weight of differential output preservation (0: off); 4 poses, seed 0: 1 -> composite 0.08, 3 -> 0.29
    # but person 0.38; with rank 4, 2 kept the person (0.62) and the concept (0.83), composite 0.21. Computed only
    # once the LoRA trains (textual inversion changes no weight: nothing to preserve there). Rank 16 needs more: at 2
    # it bent the hard person's class prompt (plain in 0.58-0.75 of images), at 4 0.83-0.92
    preservation: float = 4.0
    preservation_concept: bool = True  # (b) its prompts: the class prompt and the concept's own prompts
    preservation_generic: int = 0  # (b) also this many other world prompts (evaluate.generic_prompts)
    seed: int = 0  # training seed of both stages: one of the benchmark's training seeds, so its run is one of them
    # person checkpoints, all kept (`sdtune pick` chooses among them): 400 is where the token is learned and the
    # LoRA starts (textual inversion alone), so the chart shows both phases; each checkpoint costs the demo an
    # evaluation (12 s here)
    checkpoint_every: int = 400
    # The evaluation, the benchmark's too (sdtune.toy.demo_eval): per old-world and concept prompt `seeds` images
    # (seeds 100...), per person, class and composite prompt `person_seeds` (200...): single prompts, more images
    seeds: int = 6
    person_seeds: int = 24
    old_prompts: int = 12
    eval_steps: int = 20

    @classmethod
    def quick(cls) -> DemoSettings:
        """For tests and a first look: a few dozen steps, two seeds (numbers are then only indicative)."""
        return cls(concept_images=8, person_images=4, concept_steps=30, person_steps=30, class_images=4, seeds=2,
                   person_seeds=4, old_prompts=6, eval_steps=10, checkpoint_every=15)
