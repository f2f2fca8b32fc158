"""Run-folder state, stack profiles, the subjects CSV, per-subject configs and summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from sdtune.errors import ConfigError, SdtuneError
from sdtune.recipes.personalize import PersonalizeResult, load_template, subject_config, template_stage
from sdtune.recipes.runner import Manifest
from sdtune.recipes.runs import (
    concept_run,
    config_changes,
    read_stack,
    run_state,
    write_stack_profile,
)
from sdtune.recipes.subjects import Subject, SubjectOutcome, read_subjects, summary_markdown, write_summary
from sdtune.run_folder import read_run
from tests.helpers import make_images

REPO = Path(__file__).resolve().parents[3]


def _fake_concept(folder: Path, with_lora: bool = True) -> Path:
    """The files of a finished concept run (weights are not read by these tests), trained on two captions."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model_index.json").write_text("{}")
    thumbs = make_images(folder.parent / f"{folder.name}-data", 2, captions=["a thumbs up", "a photo of a thumbs up"])
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"},
                                                        "data": {"resolution": 48, "train_dir": str(thumbs)}}))
    if with_lora:
        (folder / "lora").mkdir()
        (folder / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    return folder


def test_run_state_reads_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert run_state(run) == "new"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    assert run_state(run) == "new", "a checkpoint without state.json is incomplete"
    (run / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    assert run_state(run) == "interrupted"
    (run / "metrics.json").write_text(json.dumps({"status": "finished"}))
    assert run_state(run) == "finished"


def test_config_changes_lists_dotted_keys() -> None:
    old = {"train": {"max_steps": 5, "lora": {"rank": 4}}, "seed": 1}
    new = {"train": {"max_steps": 6, "lora": {"rank": 4}}, "seed": 1, "extra": True}
    assert config_changes(old, new) == ["extra", "train.max_steps"]


def test_stack_profile_points_at_both_loras_and_keeps_edited_weights(tmp_path: Path) -> None:
    concept = concept_run(_fake_concept(tmp_path / "concept"))
    person = tmp_path / "person"
    assert write_stack_profile(person, concept) is None, "no person LoRA yet: nothing to stack"
    (person / "lora").mkdir(parents=True)
    (person / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"y")
    folder = write_stack_profile(person, concept, own_name="alice")
    base, adapters = read_stack(folder)
    assert base == "tiny"
    assert [(p, w, n) for p, w, n in adapters] == [
        ((tmp_path / "concept" / "lora" / "pytorch_lora_weights.safetensors").resolve(), 1.0, "concept"),
        ((person / "lora" / "pytorch_lora_weights.safetensors").resolve(), 1.0, "alice")]
    entries = json.loads((folder / "adapters.json").read_text())
    assert not Path(entries[0]["path"]).is_absolute(), "relative paths keep the output folder movable"
    entries[0]["weight"] = 0.6
    (folder / "adapters.json").write_text(json.dumps(entries))
    write_stack_profile(person, concept)
    assert read_stack(folder)[1][0][1] == 0.6


def test_concept_run_needs_a_full_model(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.yaml").write_text("model: {base: tiny}\n")
    with pytest.raises(SdtuneError, match="no full model"):
        concept_run(folder)
    with pytest.raises(SdtuneError, match="not a run folder"):
        concept_run(tmp_path / "missing")


def test_manifest_keeps_history_across_reruns(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    Manifest(path, tmp_path / "r.yaml", ["a", "b"]).update("a", "started", status="running")
    again = Manifest(path, None, ["a", "b"])
    again.update("a", "finished at step 3", status="finished", step=3)
    data = json.loads(path.read_text())
    assert data["order"] == ["a", "b"] and data["recipe"] == str(tmp_path / "r.yaml")
    assert data["stages"]["b"]["status"] == "pending"
    assert [e["event"] for e in data["stages"]["a"]["history"]] == ["started", "finished at step 3"]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_subjects_resolves_photos_next_to_the_csv(tmp_path: Path) -> None:
    (tmp_path / "photos" / "alice").mkdir(parents=True)
    (tmp_path / "abs").mkdir()
    path = _csv(tmp_path / "people.csv", "Name,Folder,Token,Class\nalice,photos/alice,sks,woman\n\n"
                f"bob,{tmp_path / 'abs'},zwx,man\n")
    alice, bob = read_subjects(path)
    assert alice == Subject("alice", (tmp_path / "photos" / "alice").resolve(), "sks", "woman")
    assert bob.photos == (tmp_path / "abs").resolve() and bob.token == "zwx"
    assert alice.fill("a photo of {token} {class} ({name})") == "a photo of sks woman (alice)"


def test_a_spreadsheet_csv_with_semicolons_or_tabs_reads_the_same(tmp_path: Path) -> None:
    """Found by a newcomer: Excel in many locales saves ';'-separated "CSV"; it was refused as "the header needs a
    'name' column (found: name;photos;token;class)"."""
    (tmp_path / "photos" / "alice").mkdir(parents=True)
    for sep in (";", "\t"):
        path = _csv(tmp_path / "people.csv", sep.join(["name", "photos", "token", "class"]) + "\n"
                    + sep.join(["alice", "photos/alice", "sks", "woman, 30s"]) + "\n")
        (alice,) = read_subjects(path)
        assert alice == Subject("alice", (tmp_path / "photos" / "alice").resolve(), "sks", "woman, 30s")


def test_read_subjects_reports_every_problem_with_line_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a 'token' column"):
        read_subjects(_csv(tmp_path / "a.csv", "name,photos,class\nalice,p,woman\n"))
    for folder in "pqr":
        (tmp_path / folder).mkdir()
    bad = _csv(tmp_path / "b.csv", "name,photos,token,class\nalice,p,sks,woman\nAlice,q,zwx,man\n"
               "bad/name,r,t,man\ncarol,,t,woman\ndave,nowhere,t,man\nerin,b.csv,t,woman\n")
    with pytest.raises(ConfigError) as info:
        read_subjects(bad)
    text = str(info.value)
    assert "line 3: the name 'Alice' differs from 'alice' (line 2) only in case" in text
    assert "line 4: name 'bad/name'" in text
    assert "line 5: empty photos" in text
    assert f"line 6: the photo folder {tmp_path / 'nowhere'} of 'dave' does not exist" in text
    assert "line 7: the photo folder" in text and "of 'erin' is a file" in text
    assert len(text.splitlines()) == 6, "one line per problem, under one heading"
    _csv(bad, "name,photos,token,class\nalice,p,sks,woman\nalice,q,zwx,man\n")
    with pytest.raises(ConfigError, match="line 3: the name 'alice' is used twice \\(line 2\\)"):
        read_subjects(bad)
    with pytest.raises(ConfigError, match="lists no subjects"):
        read_subjects(_csv(tmp_path / "c.csv", "name,photos,token,class\n"))


def test_subject_config_is_dreambooth_lora_on_the_concept_model(tmp_path: Path) -> None:
    concept = _fake_concept(tmp_path / "concept")
    subject = Subject("alice", tmp_path / "alice", "sks", "woman")
    cfg = subject_config(subject, {"train": {"max_steps": 9}, "validation": {"prompts": ["{token} {class} ok"]}},
                         concept, tmp_path / "out", overrides=["train.learning_rate=0.002"])
    assert cfg.model.base == str(concept / "model") and Path(cfg.output_dir) == tmp_path / "out" / "alice"
    assert cfg.method == "dreambooth-lora" and cfg.train.max_steps == 9 and cfg.train.learning_rate == 0.002
    assert cfg.data.instance_prompt == "a photo of sks woman" and cfg.data.class_prompt == "a photo of a woman"
    assert cfg.data.resolution == 48, "the concept's resolution, unless the template says otherwise"
    assert cfg.validation.prompts == ["sks woman ok"]
    # the template chose no preservation: output preservation on the class and the concept's prompts
    assert not cfg.data.with_prior_preservation and cfg.train.preservation.weight == 1.0
    assert cfg.train.preservation.prompts == ["a photo of a woman", "a thumbs up", "a photo of a thumbs up"]
    prior = subject_config(subject, {"data": {"with_prior_preservation": True}}, concept, tmp_path / "out")
    assert prior.data.with_prior_preservation and prior.train.preservation is None
    assert prior.data.class_dir == tmp_path / "out" / "class-images" / "woman"


def test_subject_template_from_a_recipe_stage(tmp_path: Path) -> None:
    concept = _fake_concept(tmp_path / "concept")
    template, stage = template_stage(REPO / "configs" / "two-stage.yaml", "person")
    assert template == load_template(REPO / "configs" / "two-stage.yaml", "person")
    cfg = subject_config(Subject("bob", tmp_path / "bob", "<bob>", "man"), template, concept, tmp_path / "out",
                         instance_prompt="{token} {class}, portrait", concept_preservation=stage.concept_preservation)
    assert cfg.train.lora is not None and cfg.train.lora.rank == 16 and cfg.train.max_steps == 1600
    assert cfg.train.textual_inversion is not None and cfg.train.textual_inversion.token == "<bob>"  # pivotal
    assert cfg.data.instance_prompt == "<bob> man, portrait" and cfg.data.class_prompt == "a photo of a man"
    assert cfg.data.resolution == 512 and not cfg.data.with_prior_preservation
    assert cfg.train.preservation.prompts == ["a photo of a man", "a thumbs up", "a photo of a thumbs up"]
    assert cfg.model.base == str(concept / "model")


def test_summary_tables(tmp_path: Path) -> None:
    outcomes = [SubjectOutcome("alice", "finished", 4, 0.12345, 10.0, "/x/lora.safetensors", 2, "node7", "cuda:1"),
                SubjectOutcome("bob", "failed", attempts=1, note="bad | photo\nsecond line")]
    csv_path, md_path = write_summary(tmp_path, outcomes)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["subject"] for r in rows] == ["alice", "bob"] and "fidelity" not in rows[0]
    assert rows[0]["final_loss"] == "0.1235" and rows[0]["steps"] == "4" and rows[1]["attempts"] == "1"
    assert (rows[0]["attempts"], rows[0]["node"], rows[0]["device"]) == ("2", "node7", "cuda:1")
    md = md_path.read_text()
    assert "| alice | finished | 4 | 0.1235 | 10.0 | 2 | node7 | cuda:1 |" in md and "bad \\| photo second line" in md
    outcomes[0].extra.update(fidelity=0.61234, composite=0.3, picked_step=40)
    rows = list(csv.DictReader(write_summary(tmp_path, outcomes)[0].open()))
    assert (rows[0]["fidelity"], rows[0]["composite"], rows[0]["picked_step"]) == ("0.6123", "0.3000", "40")
    assert summary_markdown(outcomes).endswith("1 of 2 subjects finished.\n")
    SubjectOutcome("alice", "finished", 4).save(tmp_path / "alice")
    assert SubjectOutcome.load(tmp_path / "alice", "alice").steps == 4
    assert SubjectOutcome.load(tmp_path / "nobody", "nobody").status == "pending"


def test_exit_codes() -> None:
    done = SubjectOutcome("a", "finished")
    failed = SubjectOutcome("b", "failed")
    assert PersonalizeResult(Path("."), summary=[done]).exit_code() == 0
    assert PersonalizeResult(Path("."), summary=[done, failed]).exit_code() == 0
    assert PersonalizeResult(Path("."), summary=[done, failed]).exit_code(strict=True) == 3
    assert PersonalizeResult(Path("."), summary=[done, SubjectOutcome("c", "pending")]).exit_code() == 130


def test_names_that_differ_only_in_case_are_refused_with_both_rows(tmp_path: Path) -> None:
    """Ann and ann are one folder OUT/ann on macOS and Windows disks: one subject would train over the other."""
    for folder in "abc":
        (tmp_path / folder).mkdir()
    path = _csv(tmp_path / "p.csv", "name,photos,token,class\nAnn,a,sks,woman\nbob,b,zwx,man\nann,c,qwe,woman\n")
    with pytest.raises(ConfigError) as info:
        read_subjects(path)
    assert "line 4: the name 'ann' differs from 'Ann' (line 2) only in case" in str(info.value)


def test_the_readme_shows_the_subjects_csv_that_personalize_reads(tmp_path: Path) -> None:
    import re

    from sdtune.recipes.subjects import COLUMNS

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"`people\.csv`.*?```csv\n(.*?)```", readme, re.S)
    assert block, "the README shows people.csv's columns"
    assert block.group(1).splitlines()[0].split(",") == list(COLUMNS)
    for row in block.group(1).splitlines()[1:]:
        (tmp_path / row.split(",")[1]).mkdir(parents=True)  # photo folders must exist
    subjects = read_subjects(_csv(tmp_path / "people.csv", block.group(1)))
    assert [s.name for s in subjects] == ["alice", "bob"] and subjects[0].photos == (tmp_path / "photos" / "alice")


def test_pivotal_subjects_learn_their_own_token_and_the_stack_carries_it(tmp_path: Path) -> None:
    concept = _fake_concept(tmp_path / "concept")
    template = {"train": {"textual_inversion": {"token": "<tok>", "learning_rate": 0.01, "ti_fraction": 0.5}}}
    cfg = subject_config(Subject("alice", tmp_path / "alice", "<ann>", "woman"), template, concept, tmp_path / "out")
    assert cfg.method == "dreambooth-pivotal" and cfg.train.textual_inversion.token == "<ann>"
    assert cfg.data.instance_prompt == "a photo of <ann> woman" and cfg.train.textual_inversion.ti_fraction == 0.5

    person = tmp_path / "person"
    (person / "lora").mkdir(parents=True)
    (person / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"y")
    (person / "embeddings").mkdir()
    (person / "embeddings" / "_ann_.safetensors").write_bytes(b"e")
    (person / "config.yaml").write_text("train:\n  textual_inversion:\n    token: <ann>\n")
    folder = write_stack_profile(person, concept_run(concept), own_name="alice")
    run = read_run(folder)
    assert run.token == "<ann>" and run.embedding_file == folder / "embeddings" / "_ann_.safetensors"


def test_tokens_that_split_are_refused_unless_the_template_learns_them(tmp_path: Path) -> None:
    from sdtune.models.tiny_tokenizer import build_tiny_tokenizer
    from sdtune.recipes.subjects import check_tokens

    build_tiny_tokenizer().save_pretrained(tmp_path / "tok")
    concept = _fake_concept(tmp_path / "concept")
    people = [Subject("ann", tmp_path / "a", "sks", "woman"), Subject("bob", tmp_path / "b", "zwx", "man")]
    configs = [subject_config(p, {}, concept, tmp_path / "out") for p in people]
    with pytest.raises(ConfigError) as info:
        check_tokens(people, configs, tmp_path / "tok")
    assert str(info.value) == ("bob: token 'zwx' splits into 3 pieces (z, w, x) in the concept's tokenizer; choose a "
                               "rare single-piece token (e.g. sks, ohwx)")
    pivotal = {"train": {"textual_inversion": {"token": "<tok>", "learning_rate": 0.01, "ti_fraction": 0.5}}}
    new = [Subject("ann", tmp_path / "a", "<ann>", "woman"), Subject("bob", tmp_path / "b", "zwx", "man")]
    check_tokens(new, [subject_config(p, pivotal, concept, tmp_path / "out") for p in new], tmp_path / "tok")
    # a pivotal template learns each token as a new one: one the vocabulary has is refused here, before any person
    # trains - as an entry ("z": it failed each person's run in turn, at diffusers' load_textual_inversion check)
    # or as a whole word ("sks" is "sks</w>" there, which that check missed: the run trained, and "sks" then meant
    # the person in every prompt, inside "asks" too)
    taken = [Subject("cy", tmp_path / "c", "z", "man"), Subject("dee", tmp_path / "d", "sks", "woman")]
    with pytest.raises(ConfigError) as info:
        check_tokens(taken, [subject_config(p, pivotal, concept, tmp_path / "out") for p in taken], tmp_path / "tok")
    assert str(info.value).splitlines() == [
        f"{name}: token '{token}' is already a word of the concept's tokenizer, and pivotal tuning learns a new "
        f"token: write one it does not have, e.g. <{token}> (or train.textual_inversion=null for a DreamBooth LoRA "
        "on the word)" for name, token in (("cy", "z"), ("dee", "sks"))]


def test_people_sharing_a_token_get_a_note(tmp_path: Path) -> None:
    """Found by a newcomer: two people with one token trained silently, and their embedding files had one name."""
    from sdtune.recipes.subjects import shared_tokens

    people = [Subject("ann", tmp_path / "a", "<x>", "woman"), Subject("bob", tmp_path / "b", "<x>", "man"),
              Subject("cy", tmp_path / "c", "<cy>", "man")]
    assert shared_tokens(people) == ["note: ann, bob share the token '<x>': each person learns its own, but their "
                                     "embedding files have one name and one prompt cannot tell them apart; give "
                                     "each person a token of its own"]
    assert shared_tokens(people[1:]) == []
