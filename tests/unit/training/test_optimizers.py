"""The optimizer table: each choice builds its library's class, a wrong argument is one line, and a resume that
changes the learning rate keeps the optimizer's own state (Prodigy's step-size estimate, schedule-free's mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import RunConfig
from sdtune.errors import ConfigError
from sdtune.training.eval_weights import EvalWeights
from sdtune.training.modules import Trainables, build_lr_scheduler
from sdtune.training.optimizers import OPTIMIZERS, make_optimizer
from sdtune.training.resume import ResumePlan, apply_changes, optimizer_hyperparameters


def _cfg(**train) -> RunConfig:
    return RunConfig.model_validate({"data": {"train_dir": "d"}, "train": train})


def _steps(opt, model: torch.nn.Module, n: int, sched=None) -> None:
    for i in range(n):
        model(torch.full((1, 3), float(i + 1))).pow(2).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()


@pytest.mark.parametrize("name", [n for n, row in OPTIMIZERS.items() if not row.needs_cuda])
def test_each_optimizer_builds_its_library_class_and_steps(name: str) -> None:
    lr = 1.0 if name == "prodigy" else 1e-3
    model = torch.nn.Linear(3, 2)
    before = model.weight.detach().clone()
    opt = make_optimizer(_cfg(optimizer=name, learning_rate=lr).train, [{"params": model.parameters(), "lr": lr}])
    assert type(opt).__name__ == OPTIMIZERS[name].cls
    _steps(opt, model, 2)
    assert not torch.equal(before, model.weight)


def test_an_argument_the_class_does_not_take_is_named_with_those_it_takes() -> None:
    train = _cfg(optimizer="prodigy", learning_rate=1.0, optimizer_args={"d_coeff": 2.0}).train
    with pytest.raises(ConfigError, match=r"train.optimizer_args: d_coeff is not an argument of Prodigy .*d_coef"):
        make_optimizer(train, [{"params": torch.nn.Linear(2, 2).parameters(), "lr": 1.0}])


@pytest.mark.parametrize("name", ["prodigy", "adamw_schedulefree"])
def test_a_new_learning_rate_on_resume_keeps_the_optimizers_own_state(tmp_path: Path, name: str) -> None:
    """Re-applying the new config's param-group settings copied every key of a fresh group: Prodigy's d went back
    to d0 (1e-6: training stalled) and schedule-free's groups back to eval mode (its step then raises)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    old = _cfg(optimizer=name, learning_rate=1.0 if name == "prodigy" else 1e-3)
    opt = make_optimizer(old.train, [{"params": model.parameters(), "lr": old.train.learning_rate}])
    sched = build_lr_scheduler(old, opt)
    _steps(opt, model, 5, sched)
    saved = opt.state_dict()
    new = _cfg(optimizer=name, learning_rate=0.5 if name == "prodigy" else 5e-4)
    fresh_opt = make_optimizer(new.train, [{"params": model.parameters(), "lr": new.train.learning_rate}])
    fresh_sched = build_lr_scheduler(new, fresh_opt)
    fresh = optimizer_hyperparameters(fresh_opt)
    fresh_opt.load_state_dict(saved)
    fresh_sched.load_state_dict(sched.state_dict())
    plan = ResumePlan(tmp_path, 5, {"train.learning_rate": [old.train.learning_rate, new.train.learning_rate]})
    apply_changes(plan, new, fresh_opt, fresh_sched, None, fresh)
    group, kept = fresh_opt.param_groups[0], saved["param_groups"][0]
    assert group["lr"] == new.train.learning_rate
    own = ["d", "d_max", "k"] if name == "prodigy" else ["k", "weight_sum", "lr_max", "train_mode"]
    assert {k: group[k] for k in own} == {k: kept[k] for k in own}
    _steps(fresh_opt, model, 1, fresh_sched)


def test_schedule_free_evaluated_weights_are_its_average_and_the_trained_ones_come_back_bitwise() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = _cfg(optimizer="adamw_schedulefree", learning_rate=1e-2)
    opt = make_optimizer(cfg.train, [{"params": model.parameters(), "lr": 1e-2}])
    _steps(opt, model, 3)
    view = EvalWeights(cfg, Trainables(model, None), opt, None)
    trained = model.weight.detach().clone()
    expected = trained.lerp(opt.state[model.weight]["z"], 1 - 1 / 0.9)
    with view.swapped():
        assert torch.equal(model.weight, expected)
    assert torch.equal(model.weight, trained) and opt.param_groups[0]["train_mode"]
