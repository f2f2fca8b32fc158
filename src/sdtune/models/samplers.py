"""Samplers (``--scheduler``): each one built from the model's noise schedule, with latent-diffusion settings.

Why not ``SomeScheduler.from_config(pipe.scheduler.config)``: a saved scheduler config holds only the fields of
the class that wrote it; every field it lacks takes the *new* class's default, and some of those defaults are
wrong for Stable Diffusion. A model saved with a DPM-Solver config (the toy model) lacks ``clip_sample``, so
``DDIMScheduler.from_config`` clipped every predicted latent to [-1, 1] (DDIM's pixel-space default) and drew
noise. The other direction carries fields meant for another sampler (a DDPM config's ``variance_type``, a
DPM-Solver config's ``use_karras_sigmas`` or ``algorithm_type``). So a sampler here takes from the model only
what the model was trained with (betas, prediction type, zero terminal SNR) and its timestep spacing, and sets
every sampler-specific field itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdtune.errors import SdtuneError
from sdtune.words import counted, plural

SCHEDULERS = ("dpm++", "ddim", "euler-a")
# Names other tools print (AUTOMATIC1111 "Sampler:"), so a PNG's parameters read the same everywhere.
SAMPLER_NAMES = {"dpm++": "DPM++ 2M", "ddim": "DDIM", "euler-a": "Euler a"}

# What the model was trained with: read from its config, never replaced by a sampler's default.
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                       "prediction_type", "rescale_betas_zero_snr")
SPACINGS = ("linspace", "leading", "trailing")

# Every sampler-specific field, set explicitly (latent diffusion: never clip or threshold latents).
_SAMPLER_SETTINGS: dict[str, dict[str, Any]] = {
    "dpm++": {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
              "lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero",
              "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
              "use_lu_lambdas": False, "thresholding": False, "variance_type": None},
    "ddim": {"clip_sample": False, "set_alpha_to_one": False, "thresholding": False},
    "euler-a": {},
}


def _scheduler_class(name: str) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    classes = {"dpm++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "euler-a": EulerAncestralDiscreteScheduler}
    if name not in classes:
        raise SdtuneError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    return classes[name]


def sampler_config(name: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The full config of sampler ``name`` for a model whose (any class's) scheduler config is ``model_config``.

    Timestep spacing: the model's own when its config names one, else ``leading`` (what SD 1.x/2.x's PNDM and
    DDIM configs, which predate the field, sample with). Two exceptions, both to start at the last training
    timestep and step exactly: a zero-terminal-SNR model always samples ``trailing`` (it was trained to denoise
    pure noise only there), and DDIM turns ``linspace`` into ``trailing`` (DDIM steps back a fixed
    ``num_train_timesteps // steps``, which linspace's uneven grid does not match: at 4 steps it ended on a
    noisy latent).
    """
    if name not in _SAMPLER_SETTINGS:
        raise SdtuneError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    config: dict[str, Any] = {k: model_config[k] for k in NOISE_SCHEDULE_KEYS if k in model_config}
    config.setdefault("prediction_type", "epsilon")
    spacing = model_config.get("timestep_spacing") or "leading"
    if spacing not in SPACINGS:
        raise SdtuneError(f"the model's scheduler config has timestep_spacing '{spacing}'; expected one of "
                          f"{', '.join(SPACINGS)}")
    if config.get("rescale_betas_zero_snr") or (name == "ddim" and spacing == "linspace"):
        spacing = "trailing"
    config["timestep_spacing"] = spacing
    config["steps_offset"] = int(model_config.get("steps_offset", 0) or 0)
    config.update(_SAMPLER_SETTINGS[name])
    return config


def make_scheduler(name: str, model_config: Mapping[str, Any]) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` (``dpm++``, ``ddim``, ``euler-a``) on the model's schedule.

    ``model_config`` is the model's scheduler config of any class (``pipe.scheduler.config``, a DDPM training
    scheduler's config, or a plain dict). Raises SdtuneError for an unknown name or timestep spacing.
    """
    return _scheduler_class(name)(**sampler_config(name, model_config))


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap ``pipe``'s sampler for ``name``, keeping the model's noise schedule and prediction type."""
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)


def check_steps(scheduler: Any, steps: int) -> None:
    """Refuse a step count the sampler cannot take on this schedule (one clear line, before any image is drawn).

    Near ``num_train_timesteps`` steps, diffusers' timestep grids repeat a timestep (DPM-Solver then divides by
    a zero step and returns NaN) or run past the last one (an IndexError): measured on diffusers 0.42 for
    DPM++ at 999-1000 steps and DDIM ``leading`` at 1000.
    """
    import numpy as np

    limit = int(scheduler.config.num_train_timesteps)
    if steps < 1 or steps > limit:
        raise SdtuneError(f"steps must be between 1 and {limit} (the model's training timesteps), not {steps}")
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    timesteps = np.asarray(probe.timesteps, dtype=np.float64)
    if len(timesteps) and (timesteps.max() >= limit or timesteps.min() < 0 or np.any(np.diff(timesteps) >= 0)):
        raise SdtuneError(f"{counted(steps, 'step')} {plural(steps, 'is')} too many for this sampler on a "
                          f"{limit}-timestep schedule (its "
                          "timesteps repeat); use fewer steps (20-50 is typical)")
