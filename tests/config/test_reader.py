"""HF-style flat override keys resolve to, or suggest, their full paths."""

import pytest

from reft_cli.config.reader import load_config
from reft_cli.config.validation import ConfigError

EMOJI = "configs/emoji.yaml"


def test_a_flat_key_naming_one_setting_is_read_there_and_said(capsys):
    run = load_config(EMOJI, ["learning_rate=1e-3", "num_train_epochs=3"])
    assert run.train.learning_rate == 1e-3 and run.train.num_train_epochs == 3
    err = capsys.readouterr().err
    assert (
        "learning_rate is train.learning_rate" in err
        and "num_train_epochs is train.num_train_epochs" in err
    )


def test_a_misspelled_flat_key_suggests_its_full_path():
    with pytest.raises(ConfigError) as caught:
        load_config(EMOJI, ["learnin_rate=0.1"])
    assert caught.value.problems == [
        "override 'learnin_rate=0.1': learnin_rate: unknown key; did you mean train.learning_rate?"
    ]


def test_a_flat_key_of_two_sections_is_refused_naming_both():
    with pytest.raises(
        ConfigError, match=r"dropout is ambiguous; write one of intervention\.dropout"
    ):
        load_config(EMOJI, ["dropout=0.1"])


def test_full_paths_are_unchanged(capsys):
    assert load_config(EMOJI, ["train.learning_rate=2e-3"]).train.learning_rate == 2e-3
    assert capsys.readouterr().err == ""
