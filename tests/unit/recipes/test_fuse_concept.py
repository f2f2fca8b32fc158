"""`sdtune personalize` fuses a LoRA-only concept into its own output folder, never into the concept's run folder.

Found by a newcomer: the fused model was written as CONCEPT/model, a side effect in another run's folder (which
personalize only reads: it may be read-only, another user's, or in use by a job).
"""

from __future__ import annotations

from pathlib import Path

from sdtune.recipes.personalize import concept_model_dir, fuse_concept, subject_config
from sdtune.recipes.subjects import Subject
from tests.helpers import make_images


def _concept_lora_run(root: Path) -> Path:
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train

    thumbs = make_images(root / "thumbs", 2, captions=["a thumbs up"])
    cfg = config_from_dict({"output_dir": str(root / "concept"), "model": {"base": "tiny"},
                            "data": {"train_dir": str(thumbs), "resolution": 32},
                            "train": {"lora": {"rank": 2}, "max_steps": 1}, "logging": {"trackers": []},
                            "validation": {"prompts": []}})
    assert train(cfg).status == "finished"
    return root / "concept"


def test_a_lora_concept_is_fused_into_the_personalize_output_not_the_concept_run(tmp_path: Path) -> None:
    concept, out = _concept_lora_run(tmp_path), tmp_path / "people"
    before = sorted(p.relative_to(concept) for p in concept.rglob("*"))
    assert not (concept / "model").exists()
    cfg = subject_config(Subject("alice", tmp_path / "thumbs", "sks", "woman"), {}, concept, out)
    assert cfg.model.base == str(out / "concept-model")
    info = fuse_concept(concept, out, echo=lambda _: None)
    assert info.model_dir == out / "concept-model" and (info.model_dir / "model_index.json").is_file()
    assert sorted(p.relative_to(concept) for p in concept.rglob("*")) == before, "the concept run was changed"
    stamp = (info.model_dir / "model_index.json").stat().st_mtime_ns
    fuse_concept(concept, out, echo=lambda _: None)  # fused once: a rerun reuses it
    assert (info.model_dir / "model_index.json").stat().st_mtime_ns == stamp


def test_a_concept_with_its_own_full_model_is_used_as_it_is(tmp_path: Path) -> None:
    concept = tmp_path / "concept"
    (concept / "model").mkdir(parents=True)
    (concept / "model" / "model_index.json").write_text("{}")
    assert concept_model_dir(concept, tmp_path / "people") == concept / "model"
