"""``--resume`` with a checkpoint that is not there names what is: ``--resume step-3`` used to say "is not a complete
checkpoint folder (no state.json)", as if a checkpoint were damaged; the short forms ``step-4`` and ``4`` of
``step-000004`` name the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.errors import SdtuneError
from sdtune.training.checkpoint import resolve_checkpoint
from tests.helpers import make_images, run_cli, tiny_config, write_config


def _checkpoints(run: Path, steps: list[int]) -> None:
    for step in steps:
        (run / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{step:06d}" / "state.json").write_text("{}")


def test_short_names_resolve_and_missing_ones_list_the_run_s_checkpoints(tmp_path: Path) -> None:
    _checkpoints(tmp_path, [2, 4, 6])
    for name in ("step-4", "4", "step-000004", str(tmp_path / "checkpoints" / "step-000004")):
        assert resolve_checkpoint(tmp_path, name) == tmp_path / "checkpoints" / "step-000004", name
    with pytest.raises(SdtuneError) as missing:
        resolve_checkpoint(tmp_path, "step-3")
    assert str(missing.value) == (f"--resume step-3: {tmp_path / 'checkpoints' / 'step-000003'} does not exist; this "
                                  "run has: step-000002, step-000004, step-000006 (or: --resume latest)")
    with pytest.raises(SdtuneError, match=r"/elsewhere/step-000002 does not exist; this run has: step-000002"):
        resolve_checkpoint(tmp_path, str(tmp_path / "elsewhere" / "step-000002"))
    (tmp_path / "checkpoints" / "step-000008").mkdir()  # a save that never finished: that is what it says
    with pytest.raises(SdtuneError, match=r"step-000008 is not a complete checkpoint folder .*this run has: "):
        resolve_checkpoint(tmp_path, "step-8")
    with pytest.raises(SdtuneError, match="has no complete checkpoint yet"):
        resolve_checkpoint(tmp_path / "new", "step-2")


@pytest.mark.slow
def test_train_resume_of_a_missing_step_is_one_line(tmp_path: Path) -> None:
    data = {"instance_dir": str(make_images(tmp_path / "data", 2)), "instance_prompt": "a photo of sks dog"}
    cfg = tiny_config(tmp_path / "run", data, {"max_steps": 6, "lora": {"rank": 2}},
                      checkpoint={"every": 2, "keep": 3}, save={"verify": False})
    config = write_config(tmp_path / "c.yaml", cfg)
    run_cli("train", str(config))
    proc = run_cli("train", str(config), "--resume", "step-3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"{tmp_path / 'run' / 'checkpoints' / 'step-000003'} does not exist; this run has: step-000002, "
            "step-000004, step-000006 (or: --resume latest)") in proc.stderr
