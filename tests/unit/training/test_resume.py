"""Resume with a new learning rate / schedule: loading the checkpoint brings the old rate back; it is set again."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdtune.config import RunConfig
from sdtune.errors import ConfigError
from sdtune.training import checkpoint as ckpt
from sdtune.training.modules import build_lr_scheduler
from sdtune.training.resume import ResumePlan, apply_changes, optimizer_hyperparameters, plan_resume


def _build(cfg: RunConfig, model: torch.nn.Module):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, betas=(cfg.train.adam_beta1, 0.999))
    return opt, build_lr_scheduler(cfg, opt)


def _cfg(**train) -> RunConfig:
    return RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lr_scheduler": "cosine", **train}})


def test_new_rate_and_schedule_apply_from_the_checkpoint_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    old = _cfg(learning_rate=1e-3, max_steps=20)
    opt, sched = _build(old, model)
    for _ in range(10):
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    new = _cfg(learning_rate=1e-5, max_steps=40, adam_beta1=0.8)
    opt2, sched2 = _build(new, model)
    fresh = optimizer_hyperparameters(opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))  # the trap
    plan = ResumePlan(tmp_path, 10, {"train.learning_rate": [1e-3, 1e-5], "train.max_steps": [20, 40],
                                     "train.adam_beta1": [0.9, 0.8]})
    apply_changes(plan, new, opt2, sched2, None, fresh)
    expected = 1e-5 * 0.5 * (1 + math.cos(math.pi * 10 / 40))  # the new cosine, continued at step 10
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt2.param_groups[0]["betas"][0] == 0.8
    assert opt2.state[model.weight]["exp_avg"].abs().sum() > 0, "Adam moments must survive"
    opt2.step()
    sched2.step()
    assert sched2.get_last_lr()[0] == pytest.approx(1e-5 * 0.5 * (1 + math.cos(math.pi * 11 / 40)))


def test_a_refused_change_names_the_key_before_anything_loads(tmp_path: Path) -> None:
    from sdtune.config import dump_config

    model = torch.nn.Linear(3, 2)
    old = _cfg(lora={"rank": 4}, max_steps=20)
    opt, sched = _build(old, model)
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=12), {"m": model}, opt, sched,
                                config_text=dump_config(old))
    with pytest.raises(ConfigError, match=r"train\.lora\.rank 4 -> 8 .*shape"):
        plan_resume(path, _cfg(lora={"rank": 8}, max_steps=20))
    with pytest.raises(ConfigError, match=r"train\.max_steps=10 is below"):
        plan_resume(path, _cfg(lora={"rank": 4}, max_steps=10))
    assert plan_resume(path, _cfg(lora={"rank": 4}, max_steps=30)).changes == {"train.max_steps": [20, 30]}


def test_resume_compares_values_as_the_run_uses_them(tmp_path: Path) -> None:
    """Resuming a rank-4 run with alpha=4 (the scale alpha=None gives) was refused as 'None -> 4.0'."""
    from sdtune.config import dump_config

    model = torch.nn.Linear(3, 2)
    old = RunConfig.model_validate({"model": {"base": "tiny"}, "data": {"train_dir": "d"},
                                    "train": {"lora": {"rank": 4}, "max_steps": 20}})
    opt, sched = _build(old, model)
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=12), {"m": model}, opt, sched,
                                config_text=dump_config(old))
    same = old.model_copy(deep=True)
    same.train.lora.alpha = 4
    same.model.prediction_type = "epsilon"  # the tiny model's own
    plan = plan_resume(path, same)
    assert plan.changes == {} and plan.config_known
    other = old.model_copy(deep=True)
    other.train.lora.alpha = 8
    with pytest.raises(ConfigError, match=r"train\.lora\.alpha null \(= 4\.0\) -> 8\.0"):
        plan_resume(path, other)


def test_a_resume_may_move_a_phase_only_where_the_run_has_not_been(tmp_path: Path) -> None:
    """Found by newcomers: pivotal tuning's phases are shares of train.max_steps, so `--resume latest
    train.max_steps=8` on a 4-step run with lora_start 0.5 held the LoRA again (start 2 -> 4) and trained the
    frozen token again (refused since); and then no resume could extend the run at all, not even with shares
    that keep every step where it was (ti_fraction and lora_start were refused outright). The rule now: the steps
    done stay in their phases; a boundary may move past the resume step."""
    from sdtune.config import dump_config

    def cfg(steps: int, ti: float = 0.5, start: float = 0.5, mask_start: float = 0.25) -> RunConfig:
        return RunConfig.model_validate({"model": {"base": "tiny"}, "data": {
            "instance_dir": "d", "instance_prompt": "a <sks>", "masked_loss": True, "mask_start": mask_start},
            "train": {"lora": {"rank": 4}, "max_steps": steps,
                      "textual_inversion": {"token": "<sks>", "ti_fraction": ti, "lora_start": start}}})

    def checkpoint(step: int) -> Path:
        model = torch.nn.Linear(3, 2)
        opt, sched = _build(cfg(4), model)
        return ckpt.save_checkpoint(tmp_path / str(step), ckpt.TrainerState(step=step), {"m": model}, opt, sched,
                                    config_text=dump_config(cfg(4)))

    done = checkpoint(3)  # token steps 1-2, LoRA held through 2, masks from step 2
    with pytest.raises(ConfigError, match=r"\(step 3\) .*the token trains through step 2 -> 4, the LoRA is held "
                                          r"through step 2 -> 4, whole images \(no masks, data.mask_start\) through "
                                          r"step 1 -> 2\); keep them where they were with train.max_steps=8: "
                                          r"train.textual_inversion.ti_fraction=0.25 "
                                          r"train.textual_inversion.lora_start=0.25 data.mask_start=0.12,"):
        plan_resume(done, cfg(8))  # the shares to paste (found by a newcomer: they had to be worked out by hand)
    plan_resume(done, cfg(8, ti=0.25, start=0.25, mask_start=0.12))  # and pasted, they resume
    assert plan_resume(done, cfg(5)).changes["train.max_steps"] == [4, 5]  # round(2.5) == 2: all stay
    longer = plan_resume(done, cfg(8, ti=0.25, start=0.25, mask_start=0.125))  # the same steps, twice the run
    assert set(longer.changes) == {"train.max_steps", "train.textual_inversion.ti_fraction",
                                   "train.textual_inversion.lora_start", "data.mask_start"}
    early = checkpoint(1)  # step 1 done: every boundary is still ahead and may move
    assert plan_resume(early, cfg(4, ti=0.75, start=0.75, mask_start=0.5)).changes["data.mask_start"] == [0.25, 0.5]
    with pytest.raises(ConfigError, match=r"whole images \(no masks, data.mask_start\) through step 1 -> 0"):
        plan_resume(early, cfg(4, mask_start=0.0))  # step 1 trained on the whole image: it cannot become masked


def test_a_resume_with_changes_and_no_step_left_says_nothing_trains(tmp_path) -> None:
    from sdtune.config import config_from_dict
    from sdtune.training.resume import ResumePlan, nothing_to_train

    cfg = config_from_dict({"data": {"train_dir": "d"}, "train": {"max_steps": 6}})
    change = {"train.learning_rate": [1e-4, 1e-5]}
    finished = ResumePlan(tmp_path / "step-000006", 6, change)
    assert "step-000006 is at train.max_steps (6): no step is left" in nothing_to_train(finished, cfg)[0]
    assert nothing_to_train(ResumePlan(tmp_path / "step-000004", 4, change), cfg) == []  # steps 5-6 use them
    assert nothing_to_train(ResumePlan(tmp_path / "step-000006", 6), cfg) == []  # only the outputs again: no note


def test_resume_with_no_run_folder_says_how_relative_output_dirs_are_read(tmp_path: Path) -> None:
    """Found by a newcomer: `--resume latest` on a config run from another folder trained a new run from step 0 in a
    new folder under the working one, with the same line as a queued job's first attempt."""
    from sdtune.training.resume import fresh_start_line

    assert fresh_start_line(tmp_path, True) == f"no checkpoint in {tmp_path / 'checkpoints'} yet: starting from step 0"
    assert "a relative output_dir is read from the working folder; to continue a run from anywhere, pass its " \
           "folder: sdtune train RUN --resume latest" in fresh_start_line(tmp_path / "new", False)
