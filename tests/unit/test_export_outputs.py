"""Where `sdtune export` writes, and what it says about it: an extraction with -o leaves the run folder alone, a
replaced extraction is named, a capped rank is said, a file export ends in .safetensors, hints name options the
command has, and a failed export leaves no folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdtune.cli import main
from sdtune.inference.testing import make_run_folder

LORA = Path("lora") / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-outputs")
    return {"full": make_run_folder(root / "full", kind="full"), "lora": make_run_folder(root / "db", kind="lora")}


@pytest.fixture()
def full(made: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made["full"], tmp_path / "full"))


@pytest.fixture()
def lora_run(made: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made["lora"], tmp_path / "db"))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``sdtune ARGV`` run in this process."""
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return int(stopped.value.code or 0), out, err


def _error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = _cli(capsys, *argv)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_extraction_with_out_leaves_the_run_folder_alone(full: Path, tmp_path: Path, capsys) -> None:
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "2")
    assert code == 0, out + err
    earlier = (full / LORA).read_bytes()
    target = tmp_path / "out" / "full-conv.safetensors"
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "4", "--conv", "--format", "kohya",
                          "-o", target)
    assert code == 0, out + err
    assert target.is_file() and (full / LORA).read_bytes() == earlier, "RUN/lora is the earlier extraction"
    assert json.loads((full / "lora" / "extraction.json").read_text())["rank"] == 2
    assert str(full / "lora") not in out, out
    from safetensors import safe_open

    with safe_open(str(target), "pt") as fh:  # the file names its run, not the temporary extraction it came from
        assert fh.metadata()["sdtune_source"] == str(full), fh.metadata()["sdtune_source"]
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "3", "-o", tmp_path / "d")
    assert code == 0, out + err
    assert (tmp_path / "d" / "pytorch_lora_weights.safetensors").is_file() and (full / LORA).read_bytes() == earlier


def test_replacing_an_earlier_extraction_says_what_it_replaced(full: Path, capsys) -> None:
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "2")
    assert code == 0 and "replaced" not in out + err, out + err
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "3", "--conv")
    assert code == 0, out + err
    assert f"replaced the earlier extraction in {full / 'lora'} (rank 2, without --conv)" in out + err, out + err
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "2", "--format", "kohya")
    assert code == 0, out + err
    assert "(rank 3, with --conv)" in out + err, out + err
    assert (full / "export" / "full-rank2.safetensors").is_file()


def test_conv_and_plain_kohya_extractions_get_their_own_files(full: Path, capsys) -> None:
    for extra in ((), ("--conv",)):
        code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "2", "--format", "kohya", *extra)
        assert code == 0, out + err
    assert sorted(p.name for p in (full / "export").iterdir()) == ["full-rank2-conv.safetensors",
                                                                   "full-rank2.safetensors"]


def test_a_rank_above_the_layers_sizes_says_it_was_capped(full: Path, tmp_path: Path, capsys) -> None:
    code, out, err = _cli(capsys, "export", "lora", "--from", full, "--rank", "1000", "-o", tmp_path / "big")
    assert code == 0, out + err
    with safe_open(str(tmp_path / "big" / "pytorch_lora_weights.safetensors"), "pt") as fh:
        widest = max(fh.get_slice(k).get_shape()[0] for k in fh.keys() if "lora_A" in k or "lora.down" in k)
    assert widest < 1000, "a rank no layer has is not padded into the file"
    assert f"rank 1000 is above the layers' sizes: capped at {widest} per layer" in out, out
    report = json.loads((tmp_path / "big" / "extraction.json").read_text())
    assert report["rank"] == 1000 and report["max_rank"] == widest


def test_export_lora_hints_name_its_own_options(tmp_path: Path, lora_run: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error_line(capsys, "export", "lora", "--from", empty)
    assert "--base" not in line and "model/" in line, line
    line = _error_line(capsys, "export", "lora", "--from", lora_run)
    assert "--base" not in line and "is a LoRA run" in line, line
    assert not (empty / "lora").exists() and not (empty / "export").exists()


@pytest.mark.parametrize("argv", [("export", "kohya", "{run}", "-o", "{out}/x.txt"),
                                  ("export", "{run}", "-o", "{out}/x.txt"),
                                  ("export", "{run}", "--format", "kohya", "-o", "{out}/x"),
                                  ("export", "{run}", "--format", "diffusers", "-o", "{out}/x.bin"),
                                  ("export", "lora", "--from", "{full}", "--format", "kohya", "-o", "{out}/x.txt")],
                         ids=["kohya", "short", "no-suffix", "diffusers", "lora-kohya"])
def test_a_file_export_must_end_in_safetensors(argv: tuple[str, ...], lora_run: Path, full: Path, tmp_path: Path,
                                               capsys) -> None:
    out = tmp_path / "out"
    line = _error_line(capsys, *(a.format(run=lora_run, full=full, out=out) for a in argv))
    assert "must end in .safetensors" in line, line
    assert not out.exists() and not (lora_run / "export").exists() and not (full / "lora").exists()


def test_an_extraction_to_a_folder_is_not_named_safetensors(full: Path, tmp_path: Path, capsys) -> None:
    line = _error_line(capsys, "export", "lora", "--from", full, "-o", tmp_path / "x.safetensors")
    assert "--format kohya" in line, line
    assert not (tmp_path / "x.safetensors").exists()


def _failing_kohya(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kohya file fails its verification (one layer's alpha doubled)."""
    from sdtune.models import kohya

    real = kohya.to_kohya

    def to_kohya(layers, dtype=torch.float32, sdxl=None):  # noqa: ANN001, ANN202 - the patched signature
        state = real(layers, dtype, sdxl)
        key = next(k for k in state if k.endswith(".alpha"))
        state[key] = state[key] * 2
        return state

    monkeypatch.setattr(kohya, "to_kohya", to_kohya)


def test_a_failed_export_leaves_no_folder(lora_run: Path, full: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    _failing_kohya(monkeypatch)
    _error_line(capsys, "export", "kohya", lora_run)
    assert not (lora_run / "export").exists()
    _error_line(capsys, "export", "kohya", lora_run, "-o", tmp_path / "new" / "deeper" / "x.safetensors")
    assert not (tmp_path / "new").exists()
    _error_line(capsys, "export", "lora", "--from", full, "--rank", "2", "--format", "kohya", "-o",
                tmp_path / "k" / "x.safetensors")
    assert not (tmp_path / "k").exists() and not (full / "lora").exists()
    _error_line(capsys, "export", "lora", "--from", full, "--rank", "2", "--format", "kohya")
    assert not (full / "export").exists()


def test_a_failed_extraction_leaves_no_folder(full: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from sdtune.errors import SdtuneError
    from sdtune.models import lora

    def refuse(*args: object, **kwargs: object) -> Path:
        raise SdtuneError("written wrong")

    monkeypatch.setattr(lora, "write_lora_file", refuse)
    line = _error_line(capsys, "export", "lora", "--from", full, "--rank", "2", "-o", tmp_path / "new" / "lora")
    assert "written wrong" in line
    assert not (tmp_path / "new").exists()
