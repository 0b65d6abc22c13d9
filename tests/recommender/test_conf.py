"""The typed recommender configuration and its system check."""

import dataclasses

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from recommender.conf import RecommenderConfig, check_config, config


def test_settings_defaults_are_valid_and_typed():
    conf = config()
    assert isinstance(conf, RecommenderConfig) and conf.problems() == []
    assert isinstance(conf.epochs, int) and isinstance(conf.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conf.epochs = 1


def test_replacing_the_settings_dict_is_seen_at_once(settings):
    before = config()
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCHS": 3}
    assert config().epochs == 3 and config() is not before
    assert config() is config()  # cached until the dict is replaced again


@pytest.mark.parametrize("key, value, words", [
    ("EPOCHS", 0, "EPOCHS'] must be at least 1 (it is 0)"),
    ("VALIDATION_SPLIT", 1.5, "VALIDATION_SPLIT'] must be between 0 and 1"),
    ("GATE_TOLERANCE", "0.02", "GATE_TOLERANCE'] must be a number, not '0.02'"),
    ("MAX_ATTEMPTS", True, "MAX_ATTEMPTS'] must be a whole number, not True"),
    ("MAX_ATTEMPTS", 2.5, "MAX_ATTEMPTS'] must be a whole number, not 2.5"),
    ("INPUT_SIZE", 16, "INPUT_SIZE'] must be at least 32 pixels"),
    ("EF_SEARCH", 1001, "EF_SEARCH'] must be between 1 and 1000"),
    ("BACKBONE_RUNTIME", "onnx", "BACKBONE_RUNTIME'] must be one of auto, openvino, keras (it is 'onnx')"),
    ("NEIGHBOUR_LISTS_MAX_ROWS", -1, "NEIGHBOUR_LISTS_MAX_ROWS'] must be 0 (no lists) or more"),
])
def test_bad_values_are_named(settings, key, value, words):
    settings.RECOMMENDER = {**settings.RECOMMENDER, key: value}
    with pytest.raises(ValueError, match=None) as raised:
        config()
    assert words in str(raised.value)
    [error] = check_config()
    assert error.id == "recommender.E001" and words in error.msg


def test_unknown_keys_are_refused(settings):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EPOCH": 3}
    [error] = check_config()
    assert "unknown RECOMMENDER keys: EPOCH" in error.msg


def test_missing_keys_are_refused_config_settings_holds_the_only_defaults(settings):
    settings.RECOMMENDER = {k: v for k, v in settings.RECOMMENDER.items() if k != "SEED"}
    [error] = check_config()
    assert "missing RECOMMENDER keys: SEED" in error.msg


def test_manage_py_check_reports_a_bad_value(settings):
    settings.RECOMMENDER = {**settings.RECOMMENDER, "EF_SEARCH": 0}
    with pytest.raises(SystemCheckError, match="recommender.E001.*EF_SEARCH"):
        call_command("check")


def test_a_valid_configuration_passes_the_check():
    assert check_config() == []
