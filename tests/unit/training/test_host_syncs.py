"""Issue 26: a training step reads values from the device at most once (on a GPU each read is a host sync that
stops the CPU from queueing kernels), and the trainable parameters are collected once, not walked every step.

Every read of a tensor's value into Python goes through ``aten::_local_scalar_dense`` (``item()``, ``float()``,
``bool()``, ``int()``) or ``Tensor.tolist``: a dispatch mode counts them while the real loop trains the tiny model.
Reads under ``torch/optim`` (AdamW's step counters live on the CPU) and ``torch/utils/data`` (the data loader's
CPU-side work, in worker processes on a GPU run) are not syncs on a GPU and are not counted.
"""

from __future__ import annotations

import collections
import json
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sdtune.config import config_from_dict
from sdtune.models.loading import load_components
from sdtune.training import loop
from sdtune.training.divergence import DivergenceGuard
from sdtune.training.modules import configure_trainables
from tests.helpers import make_images, tiny_config

HOST_SIDE = ("/torch/optim/", "/torch/utils/data/")


class ReadCounter(TorchDispatchMode):
    """Counts value reads, bucketed by ``self.step`` (set by the caller)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.reads: collections.Counter = collections.Counter()
        self.sites: dict[int, list[str]] = collections.defaultdict(list)

    def note(self) -> None:
        stack = traceback.extract_stack(limit=40)
        if any(part in frame.filename for frame in stack for part in HOST_SIDE):
            return
        self.reads[self.step] += 1
        self.sites[self.step].append(" <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stack[-6:-1]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.note()
        return func(*args, **(kwargs or {}))


def _counter(monkeypatch) -> ReadCounter:
    counter = ReadCounter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counter.note()
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    return counter


def _count_reads(monkeypatch, cfg) -> ReadCounter:
    counter = _counter(monkeypatch)

    class Bar(loop.tqdm):  # one update per optimizer step: the reads since the last one are that step's
        def update(self, n=1):
            counter.step += 1
            return super().update(n)

    monkeypatch.setattr(loop, "tqdm", Bar)
    with counter:
        loop.train(cfg)
    return counter


@pytest.mark.parametrize("train", [
    {"lora": {"rank": 2}, "gradient_accumulation_steps": 2},  # clipping on (the default), two micro-steps
    {"max_grad_norm": None, "train_text_encoder": True},  # full fine-tune, the gradient norm without clipping
    # a loss term beside the diffusion loss: logged on its own, read with the step's one read
    {"lora": {"rank": 2}, "preservation": {"prompts": ["a photo of a dog"]}},
])
def test_a_training_step_reads_the_device_at_most_once(tmp_path: Path, monkeypatch, train: dict) -> None:
    data = {"instance_dir": str(make_images(tmp_path / "inst", 3)), "instance_prompt": "a photo of sks dog"}
    cfg = config_from_dict(tiny_config(tmp_path / "run", data, {"max_steps": 5, **train},
                                       checkpoint={"every": 100, "keep": 1}, save={"verify": False}))
    counter = _count_reads(monkeypatch, cfg)
    steps = range(1, 5)  # bucket s: the reads after the bar's s-th update, i.e. step s + 1's (steps 2-5); bucket 0
    # holds the set-up and step 1, bucket 5 the end of the run (its checkpoint, outputs)
    assert all(counter.reads[s] <= 1 for s in steps), {s: counter.sites[s] for s in steps if counter.reads[s] > 1}
    assert all(counter.reads[s] == 1 for s in steps), "each step is judged (its one read)"
    lines = [json.loads(line) for line in (tmp_path / "run" / "logs" / "progress.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(("preservation_loss" in line) == ("preservation" in train) for line in lines)


def test_the_trainable_parameters_are_collected_once(tmp_path: Path, monkeypatch) -> None:
    cfg = config_from_dict({"data": {"instance_dir": str(tmp_path), "instance_prompt": "sks"},
                            "train": {"lora": {"rank": 2}}})
    trainables = configure_trainables(cfg, load_components("tiny"), torch.device("cpu"))
    walks = []
    parameters = torch.nn.Module.parameters

    def counted(self, recurse=True):
        walks.append(type(self).__name__)
        return parameters(self, recurse)

    monkeypatch.setattr(torch.nn.Module, "parameters", counted)
    first = trainables.parameters()
    assert first and all(p.requires_grad for p in first)
    walked = len(walks)
    assert [id(p) for p in trainables.parameters()] == [id(p) for p in first]
    assert len(walks) == walked, "a later call walks no module"
    first[0].requires_grad_(False)  # a change of what trains is picked up by refresh()
    trainables.refresh()
    assert len(trainables.parameters()) == len(first) - 1


def _guard(tmp_path: Path, **kwargs) -> DivergenceGuard:
    cfg = config_from_dict({"data": {"train_dir": "d"}, "train": {"max_grad_norm": 1.0}})
    return DivergenceGuard(cfg, tmp_path, main_process=True, grad_scaler=False, resumed_step=None, **kwargs)


def _micro(guard: DivergenceGuard, loss: float, zero: float = 1.0) -> None:
    guard.record_loss(torch.tensor([loss]), torch.tensor([zero]))


def test_judge_names_the_step_and_the_first_bad_value_after_one_read(tmp_path: Path, monkeypatch) -> None:
    guard = _guard(tmp_path)
    _micro(guard, 0.5)
    _micro(guard, 0.25)
    guard.record_gradients(torch.tensor(3.0))
    with _counter(monkeypatch) as counter:
        verdict = guard.judge(7)
    assert sum(counter.reads.values()) == 1
    assert verdict.loss == 0.375 and not verdict.stop_requested
    _micro(guard, float("nan"))
    guard.record_gradients(torch.tensor(float("nan")))
    with pytest.raises(Exception, match="the loss became nan at step 8"):  # the loss is judged before the gradient
        guard.judge(8)
    _micro(guard, 0.5)
    guard.record_gradients(torch.tensor(float("inf")))
    with pytest.raises(Exception, match=r"the gradient norm became inf at step 9 \(its update was not saved\)"):
        guard.judge(9)


def test_a_blown_up_loss_keeps_the_checkpoints_before_it_unjudged(tmp_path: Path, capsys) -> None:
    guard = _guard(tmp_path)
    guard.saved(2)
    _micro(guard, 0.5)
    _micro(guard, 50.0)  # 50x the loss of predicting zero: diverging
    guard.judge(3)
    assert guard.suspects == [2] and "the loss at step 3 (50) is 50 times" in capsys.readouterr().out
    _micro(guard, 0.5)
    guard.judge(4)
    assert guard.suspects == [], "a sane step makes them good"
