"""Every --scheduler draws what the default draws: judged on the toy world, checked on v-prediction and zero SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdtune.errors import SdtuneError
from sdtune.inference.generate import GenerationSettings, generate_images
from sdtune.models.loading import load_pipeline
from sdtune.models.samplers import SCHEDULERS, check_steps, make_scheduler, sampler_config

# SD 1.5's scheduler_config.json (a PNDM config that predates timestep_spacing).
SD15_CONFIG = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
               "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}


@pytest.fixture(scope="module")
def toy():
    from sdtune.toy.evaluate import default_judge, load_toy_pipeline, old_prompts

    return load_toy_pipeline("toy"), default_judge(), old_prompts(12)


def _judge_both(toy, scheduler: str, steps: int) -> float:
    from sdtune.toy.evaluate import score

    pipe, judge, expects = toy
    seeds = [0, 1]
    jobs = [(e.prompt, s) for e in expects for s in seeds]
    images = generate_images(pipe, jobs, GenerationSettings(steps=steps, guidance=4.0, scheduler=scheduler),
                             batch_size=len(jobs))
    return score(expects, seeds, images, judge)["both"]


@pytest.mark.parametrize("steps", [8, 20])
def test_every_sampler_draws_the_toy_world_as_well_as_the_default(toy, steps: int) -> None:
    # The toy model's saved scheduler is DPM-Solver's: DDIM built from it clipped latents and drew noise (0.00).
    default = _judge_both(toy, "dpm++", steps)
    assert default >= 0.75, f"the default sampler itself draws badly ({default:.2f}): the test means nothing"
    for name in SCHEDULERS[1:]:
        got = _judge_both(toy, name, steps)
        assert got >= default - 0.2, f"{name} at {steps} steps: colour and shape right {got:.2f}, dpm++ {default:.2f}"


def _tiny_v(scheduler_class: str, **overrides):
    """tiny-v whose saved scheduler is of another class (as the toy model's is DPM-Solver's)."""
    import diffusers

    pipe = load_pipeline("tiny-v")
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    known = set(getattr(diffusers, scheduler_class).from_config(config).config)
    pipe.scheduler = getattr(diffusers, scheduler_class).from_config({k: v for k, v in config.items() if k in known},
                                                                     **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(pipe, name: str, steps: int) -> np.ndarray:
    (image,) = generate_images(pipe, [("a photo of sks person", 0)], GenerationSettings(steps=steps, guidance=3.0,
                                                                                       scheduler=name))
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("saved_as", ["DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_v_prediction_samplers_solve_the_same_ode(saved_as: str) -> None:
    # DDIM and DPM++ (eta 0) both solve the probability-flow ODE: with many steps they must land on the same
    # image, whatever class the model saved its scheduler as. Euler a is stochastic: finite is what it owes.
    pipe = _tiny_v(saved_as)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ddim, dpm = _image(pipe, "ddim", 25), _image(pipe, "dpm++", 25)
    assert np.abs(ddim - dpm).mean() < 2.0, f"DDIM and DPM++ disagree on tiny-v saved as {saved_as}"
    for steps in (1, 2):
        for name in SCHEDULERS:
            assert np.isfinite(_image(pipe, name, steps)).all()


def test_zero_terminal_snr_models_sample_finite_images_from_the_last_timestep() -> None:
    pipe = _tiny_v("DDIMScheduler", rescale_betas_zero_snr=True, timestep_spacing="leading")
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, pipe.scheduler.config)
        assert scheduler.config.timestep_spacing == "trailing"
        scheduler.set_timesteps(4)
        assert int(scheduler.timesteps[0]) == 999
        for steps in (1, 4):
            images = generate_images(pipe, [("a dog", 1)], GenerationSettings(steps=steps, scheduler=name))
            assert np.isfinite(np.asarray(images[0], dtype=np.float64)).all()


def test_sampler_config_keeps_the_models_schedule_and_sets_the_rest() -> None:
    dpm_saved = {**SD15_CONFIG, "_class_name": "DPMSolverMultistepScheduler", "timestep_spacing": "linspace",
                 "prediction_type": "v_prediction", "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}
    ddim = sampler_config("ddim", dpm_saved)
    assert (ddim["clip_sample"], ddim["set_alpha_to_one"], ddim["prediction_type"]) == (False, False, "v_prediction")
    assert ddim["timestep_spacing"] == "trailing"  # DDIM's fixed step back does not fit linspace's grid
    dpm = sampler_config("dpm++", dpm_saved)  # "DPM++ 2M" means exactly that, whatever the model saved
    assert (dpm["algorithm_type"], dpm["use_karras_sigmas"], dpm["timestep_spacing"]) == ("dpmsolver++", False,
                                                                                          "linspace")
    for name in SCHEDULERS:
        cfg = make_scheduler(name, SD15_CONFIG).config
        assert (cfg.timestep_spacing, cfg.steps_offset, cfg.prediction_type) == ("leading", 1, "epsilon")
        assert cfg.beta_schedule == "scaled_linear" and cfg.get("clip_sample", False) is False
    with pytest.raises(SdtuneError, match="unknown scheduler"):
        make_scheduler("plms", SD15_CONFIG)
    with pytest.raises(SdtuneError, match="timestep_spacing"):
        make_scheduler("ddim", {**SD15_CONFIG, "timestep_spacing": "karras"})


def test_too_many_steps_is_one_clear_error() -> None:
    for name in SCHEDULERS:
        check_steps(make_scheduler(name, SD15_CONFIG), 500)
        with pytest.raises(SdtuneError, match="between 1 and 1000"):
            check_steps(make_scheduler(name, SD15_CONFIG), 1001)
    with pytest.raises(SdtuneError, match="too many"):  # diffusers: NaN images
        check_steps(make_scheduler("dpm++", {**SD15_CONFIG, "timestep_spacing": "linspace"}), 1000)
    with pytest.raises(SdtuneError, match="too many"):  # diffusers: IndexError
        check_steps(make_scheduler("ddim", SD15_CONFIG), 1000)
    pipe = load_pipeline("tiny")
    with pytest.raises(SdtuneError, match="between 1 and 1000"):
        generate_images(pipe, [("a dog", 0)], GenerationSettings(steps=5000))
    assert torch.isfinite(torch.tensor(np.asarray(generate_images(pipe, [("a dog", 0)],
                                                                  GenerationSettings(steps=1))[0]), dtype=float)).all()
