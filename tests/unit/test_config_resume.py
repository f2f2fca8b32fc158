"""Which keys may change on resume: every key is decided in one table, and the decisions classify real configs."""

from __future__ import annotations

import pytest
import yaml

from sdtune.config import RunConfig, dump_config, list_keys
from sdtune.config_resume import RESUME_RULES, rule_for, split_changes


def test_every_config_key_has_a_resume_rule_and_train_keys_are_each_decided() -> None:
    keys = [key for key, _, _ in list_keys()]
    missing = [key for key in keys if rule_for(key) is None]
    assert not missing, f"decide in sdtune/config_resume.py whether these may change on resume: {missing}"
    # train.* has no section default: each key (or its sub-section) is listed on purpose
    undecided = [key for key in keys if key.startswith("train.")
                 and not any(key == rule or key.startswith(rule + ".") for rule in RESUME_RULES if rule != "train")]
    assert not undecided, undecided


def _dict(cfg: RunConfig) -> dict:
    return yaml.safe_load(dump_config(cfg))


def test_changes_are_split_into_applied_and_refused() -> None:
    old = RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lora": {"rank": 4}}})
    new = old.model_copy(deep=True)
    new.train.learning_rate = 1e-5
    new.train.max_steps = 50
    new.train.max_grad_norm = None
    new.train.lora.dropout = 0.1
    new.checkpoint.every = 7
    new.data.caption_dropout = 0.1
    allowed, refused = split_changes(_dict(old), _dict(new))
    assert set(allowed) == {"train.learning_rate", "train.max_steps", "train.max_grad_norm", "train.lora.dropout",
                            "checkpoint.every", "data.caption_dropout"} and not refused
    assert allowed["train.learning_rate"] == [1e-4, 1e-5]

    new.train.lora.rank = 8
    new.train.seed = 1
    new.data.train_dir = "other"
    new.model.base = "tiny-v"
    _, refused = split_changes(_dict(old), _dict(new))
    assert set(refused) == {"train.lora.rank", "train.seed", "data.train_dir", "model.base"}


def test_adding_lora_or_ema_is_refused_but_ema_decay_may_change() -> None:
    full = RunConfig.model_validate({"data": {"train_dir": "d"}})
    with_ema = RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"ema": {"decay": 0.99}}})
    lora = RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lora": {}}})
    assert set(split_changes(_dict(full), _dict(with_ema))[1]) == {"train.ema"}
    assert set(split_changes(_dict(full), _dict(lora))[1]) == {"train.lora"}
    slower = with_ema.model_copy(deep=True)
    slower.train.ema.decay = 0.999
    assert split_changes(_dict(with_ema), _dict(slower)) == ({"train.ema.decay": [0.99, 0.999]}, {})


@pytest.mark.parametrize("old,new", [
    # the reported case: alpha None means alpha = rank; writing the same scale out is no change
    ({"train": {"lora": {"rank": 4}}}, {"train": {"lora": {"rank": 4, "alpha": 4}}}),
    ({"train": {"train_text_encoder": True, "learning_rate": 2e-4}},
     {"train": {"train_text_encoder": True, "learning_rate": 2e-4, "text_encoder_lr": 2e-4}}),
    # keys the run does not use: the text encoder is frozen, prior preservation is off
    ({"train": {"lora": {"rank": 4}}}, {"train": {"lora": {"rank": 4, "text_encoder_targets": ["q_proj"]}}}),
    ({"train": {"text_encoder_lr": 1e-5}}, {"train": {"text_encoder_lr": 3e-5}}),
    ({}, {"data": {"class_prompt": "a photo of a dog", "num_class_images": 7}}),
])
def test_a_derived_or_unused_value_written_out_is_no_change(old: dict, new: dict) -> None:
    def config(extra: dict) -> dict:
        base = {"data": {"train_dir": "d"}}
        merged = {key: base.get(key, {}) | extra.get(key, {}) for key in set(base) | set(extra)}
        return _dict(RunConfig.model_validate(merged))

    assert split_changes(config(old), config(new)) == ({}, {})


def test_derived_values_still_count_when_they_differ_and_the_model_tells_its_own() -> None:
    rank4 = _dict(RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lora": {"rank": 4}}}))
    alpha8 = _dict(RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lora": {"rank": 4, "alpha": 8}}}))
    assert split_changes(rank4, alpha8)[1] == {"train.lora.alpha": [None, 8.0]}
    eps = _dict(RunConfig.model_validate({"data": {"train_dir": "d"}, "model": {"prediction_type": "epsilon"}}))
    plain = _dict(RunConfig.model_validate({"data": {"train_dir": "d"}}))
    assert split_changes(plain, eps, {"model.prediction_type": "epsilon"}) == ({}, {})
    assert set(split_changes(plain, eps, {"model.prediction_type": "v_prediction"})[1]) == {"model.prediction_type"}


def test_an_override_the_run_will_not_use_gets_a_note() -> None:
    from sdtune.config import config_from_dict
    from sdtune.config_resume import unused_overrides

    frozen = config_from_dict({"data": {"train_dir": "d"}, "train": {"text_encoder_lr": 1e-5}}).model_dump(mode="json")
    notes = unused_overrides(["train.text_encoder_lr=1e-5", "train.learning_rate=1e-4"], frozen)
    assert notes == ["note: train.text_encoder_lr has no effect: train.train_text_encoder is off (set "
                     "train.train_text_encoder=true to use it)"]
    trained = config_from_dict({"data": {"train_dir": "d"}, "train": {"text_encoder_lr": 1e-5,
                                                                      "train_text_encoder": True}})
    assert unused_overrides(["train.text_encoder_lr=1e-5"], trained.model_dump(mode="json")) == []


def test_the_class_prompt_is_used_by_output_preservation_too() -> None:
    """data.class_prompt is output preservation's prompt when train.preservation lists none: an override of it is
    no "has no effect" note, and a change of it on resume is a change (both treated it as unused before)."""
    from sdtune.config import config_from_dict
    from sdtune.config_resume import unused_overrides

    def config(prompt: str) -> dict:
        return _dict(config_from_dict({"data": {"instance_dir": "d", "instance_prompt": "a photo of sks dog",
                                                "class_prompt": prompt},
                                       "train": {"lora": {"rank": 4}, "preservation": {}}}))

    assert unused_overrides(["data.class_prompt=a photo of a dog"], config("a photo of a dog")) == []
    assert split_changes(config("a photo of a dog"), config("a photo of a cat"))[1] == {  # refused, as data is
        "data.class_prompt": ["a photo of a dog", "a photo of a cat"]}
