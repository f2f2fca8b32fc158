"""`sdtune jobs submit --kind run|personalize|eval|pick|caption` (and the page's submit) refuse at submit, in one
line, what the command would refuse in its first second.

Found by a newcomer: a pick job on a missing run folder, a personalize job on a missing CSV, and a bad key=value
were queued without a word and failed in the worker (overnight). Train jobs were already checked at submit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdtune.errors import SdtuneError
from sdtune.jobs.kinds import command_submission, train_submission
from sdtune.jobs.store import JobStore
from sdtune.jobs.workspace import find_workspace
from tests.helpers import make_images, run_cli

REPO = Path(__file__).resolve().parents[3]


def _refused(kind: str, args: list[str], cwd: Path, match: str, store: JobStore | None = None) -> None:
    with pytest.raises(SdtuneError, match=match) as caught:
        command_submission(kind, args, cwd=cwd, store=store)
    assert "\n" not in str(caught.value)


def _concept(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model_index.json").write_text("{}")
    data = make_images(folder.parent / "concept-data", 2, captions=["a thumbs up"])
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"},
                                                        "data": {"resolution": 32, "train_dir": str(data)}}))
    return folder


def test_personalize_job_missing_csv_bad_override_and_bad_option(tmp_path: Path) -> None:
    concept = _concept(tmp_path / "concept")
    _refused("personalize", ["people.csv", "--concept", str(concept)], tmp_path, r"subjects CSV .*people.csv")
    make_images(tmp_path / "photos" / "alice", 2)
    (tmp_path / "people.csv").write_text("name,photos,token,class\nalice,photos/alice,sks,woman\n")
    ok = ["people.csv", "--concept", str(concept), "--out", "people"]
    assert command_submission("personalize", [*ok, "train.max_steps=5"], cwd=tmp_path).notes == []
    _refused("personalize", [*ok, "nope"], tmp_path, "override 'nope' must look like key.sub=value")
    _refused("personalize", [*ok, "train.max_step=5"], tmp_path, "train.max_step")
    _refused("personalize", [*ok, "--concept-prior", "-1"], tmp_path, "--concept-prior")
    _refused("personalize", ["people.csv", "--concept", str(tmp_path / "nope")], tmp_path, "--concept .*nope")
    _refused("personalize", ["people.csv"], tmp_path, "Missing option '--concept'")


def test_run_job_missing_recipe_and_bad_override(tmp_path: Path) -> None:
    _refused("run", ["nope.yaml"], tmp_path, "recipe .*nope.yaml")
    recipe = str(REPO / "configs" / "two-stage.yaml")
    _refused("run", [recipe, "concept.train.max_step=5"], tmp_path, "max_step")
    _refused("run", [recipe, "nostage.train.max_steps=5"], tmp_path, "nostage")


def test_eval_pick_and_caption_jobs_refuse_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    _refused("pick", ["runs/nope"], tmp_path, r"RUN .*runs/nope")
    (tmp_path / "runs" / "plain").mkdir()
    _refused("pick", ["runs/plain"], tmp_path, "not a run folder")
    _refused("pick", ["runs/plain", "--promts", "p.txt"], tmp_path, "No such option: --promts")
    _refused("eval", ["runs/nope", "--prompt", "a cat"], tmp_path, r"model runs/nope: .* does not exist")
    _refused("eval", ["toy", "--prompts", "p.txt"], tmp_path, r"--prompts .*p.txt")
    _refused("eval", ["toy", "--seeds", "x"], tmp_path, "seeds")
    assert command_submission("eval", ["toy", "org/model", "--prompt", "a cat"], cwd=tmp_path).notes == []
    _refused("caption", ["photos", "data/out", "--caption=x"], tmp_path, r"source folder .*photos")


def _queue_and_config(tmp_path: Path) -> tuple[Path, JobStore, Path]:
    """A workspace, its queue and a small valid train config (photos folder ``me``)."""
    ws = find_workspace(tmp_path / "ws")
    (tmp_path / "me").mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"base": "tiny"}, "data": {"instance_dir": "me", "resolution": 32,
                                                                         "instance_prompt": "a photo of sks"}}))
    return ws, JobStore.in_workspace(ws), config


def test_a_folder_a_queued_job_writes_is_a_note_not_a_refusal(tmp_path: Path) -> None:
    ws, store, config = _queue_and_config(tmp_path)
    sub = train_submission(ws, config, [], name="a", cwd=tmp_path)
    store.submit(sub.kind, sub.argv, name=sub.name, run_dir=sub.run_dir, cwd=sub.cwd)
    sub = command_submission("pick", [str(ws / "runs" / "a")], cwd=tmp_path, store=store)
    assert sub.notes and "a job queued before this one writes it" in sub.notes[0]
    _refused("pick", [str(ws / "runs" / "b")], tmp_path, "does not exist", store=store)
    cap = command_submission("caption", ["me", "data/captioned", "--caption=x"], cwd=tmp_path, store=store)
    store.submit(cap.kind, cap.argv, name=cap.name, cwd=cap.cwd)
    sub = command_submission("caption", ["data/captioned", "data/twice", "--caption=y"], cwd=tmp_path, store=store)
    assert sub.notes and "data/captioned" in sub.notes[0]


def test_the_cli_refuses_in_one_line_and_queues_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    proc = run_cli("jobs", "submit", "--kind", "pick", "runs/nope", "--workspace", str(ws), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: RUN ") and len(proc.stderr.strip().splitlines()) == 1
    assert JobStore.in_workspace(ws).jobs() == []


def test_model_keys_are_checked_at_submit_unless_a_queued_job_writes_them(tmp_path: Path) -> None:
    """Found in review: `jobs submit` queued a train or run job whose model.base / model.vae / model.adapters named
    nothing; `sdtune train` refused it only when the worker started it. A model that a job queued earlier writes
    (a concept run's model/, an earlier stage's) is a note, as the other inputs are."""
    from sdtune.errors import ModelLoadError

    ws, store, config = _queue_and_config(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^model.base: .*nope"):
        train_submission(ws, config, ["model.base=./nope"], name="x", cwd=tmp_path, store=store)
    with pytest.raises(ModelLoadError, match=r"^model.adapters\[0\].path: .*gone"):
        train_submission(ws, config, ["model.adapters=[{path: ./gone.safetensors, name: c}]", "train.lora={}"],
                         name="x", cwd=tmp_path, store=store)
    first = train_submission(ws, config, ["save.full_model=true"], name="concept", cwd=tmp_path, store=store)
    store.submit(first.kind, first.argv, name=first.name, run_dir=first.run_dir, cwd=first.cwd)
    later = train_submission(ws, config, [f"model.base={first.run_dir}/model"], name="person", cwd=tmp_path,
                             store=store)
    assert later.notes and "the output of a job queued before this one" in later.notes[-1], later.notes
    relative = train_submission(ws, config, [f"model.base={first.run_dir.relative_to(tmp_path)}/model",
                                             "data.class_dir=classes"],  # as the shipped configs name an unused one
                                name="person2", cwd=tmp_path, store=store)  # the same path, relative: a note too
    assert relative.notes and "the output of a job queued before this one" in relative.notes[-1], relative.notes
    assert not any("class_dir" in note for note in relative.notes), "no prior preservation: no class folder read"
    photo = next(iter((make_images(tmp_path / "pngs", 1)).iterdir()))  # an image passed as a model or a LoRA
    with pytest.raises(ModelLoadError, match=r"^model.base: .* is not a weights file"):
        train_submission(ws, config, [f"model.base={photo}"], name="x", cwd=tmp_path, store=store)
    with pytest.raises(ModelLoadError, match=r"^model.adapters\[0\].path: .* is not a weights file"):
        train_submission(ws, config, [f"model.adapters=[{{path: {photo}, name: c}}]", "train.lora={}"], name="x",
                         cwd=tmp_path, store=store)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": "runs/two", "defaults": {"model": {"base": "tiny"}}, "stages": [
        {"name": "concept", "config": {"data": {"instance_dir": "me", "instance_prompt": "a photo of sks",
                                                "resolution": 32}}},
        {"name": "person", "base": "stage:concept",
         "config": {"data": {"instance_dir": "me", "instance_prompt": "a photo of sks", "resolution": 32}}}]}))
    assert command_submission("run", [str(recipe)], cwd=tmp_path, store=store).notes == []  # stage:concept: fine
    _refused("run", [str(recipe), "person.model.vae=./novae"], tmp_path, r"stage 'person' .*model.vae: .*novae",
             store=store)
