"""benchmarks/two_stage.py: the hard person's variants and the VAE ceilings its table prints (issue #23, part 1)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from two_stage import VARIANTS, ceiling_key, ceiling_looks, markdown, settings_for, table  # noqa: E402


def test_hard_ceiling_is_asked_for_with_a_hard_variant_only() -> None:
    assert ceiling_looks(["ti-400", "pivotal-frac-0.5"]) == ["striped"]
    assert ceiling_looks(["ti-400", "hard-pivotal-frac-0.25+mask"]) == ["striped", "halved"]
    # the easy person's row keeps the key the demo's published summary reads
    assert [ceiling_key(look) for look in ("striped", "halved")] == ["vae-ceiling", "vae-ceiling-halved"]


def test_table_prints_both_ceilings_beside_the_rows() -> None:
    """The ceiling is one measurement (200 reconstructions), printed without a spread, after the seeds' rows."""
    keys = ("old_both", "concept", "person_judge", "person_pixels", "class_solid", "composite", "composite_pixels",
            "composite_shape", "composite_identity")
    row = dict.fromkeys(keys, 0.5)
    done = {"concept-s0": {"key": "concept-s0", **row},
            "hard-ti-400-s0": {"key": "hard-ti-400-s0", **row, "train_seconds": 1.0}}
    tab = table(done, ["hard-ti-400"], [0])
    tab["ceiling"] = {"person_judge": 1.0, "composite": 0.94}
    tab["ceiling_halved"] = {"person_judge": 1.0, "composite": 0.68}
    lines = markdown(tab).splitlines()
    assert lines[-2].startswith("| VAE ceiling (striped person) |") and "0.94" in lines[-2]
    assert lines[-1].startswith("| VAE ceiling (halved person) |") and "0.68" in lines[-1] and "±" not in lines[-1]
    assert any(line.startswith("| hard-ti-400 |") for line in lines)


def test_masked_pivotal_quarter_is_a_variant_of_both_persons() -> None:
    for name, look in (("pivotal-frac-0.25+mask", "striped"), ("hard-pivotal-frac-0.25+mask", "halved")):
        assert name in VARIANTS
        settings = settings_for(name, seed=1, quick=False)
        assert (settings.person_method, settings.person_ti_fraction, settings.person_masks,
                settings.person_look, settings.seed) == ("pivotal", 0.25, True, look, 1)
