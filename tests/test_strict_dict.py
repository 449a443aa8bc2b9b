"""The strict-dict helper: each rule's message, unknown and missing keys, the did-you-mean."""

import pytest

from bing_bert_pld.strict_dict import (BOOL, POSITIVE_INT, ConfigError, Rule, check_value, checked,
                                       described_keys)


@pytest.mark.parametrize("rule, value, message", [
    (POSITIVE_INT, 0, "must be a positive integer, got 0"),
    (POSITIVE_INT, 2.0, "must be a positive integer, got 2.0"),
    (POSITIVE_INT, True, "must be a positive integer, got true"),
    (Rule("integer", low=0), -1, "must be an integer >= 0, got -1"),
    (Rule(low=0, low_open=True), "1e-3", "must be a positive number, got the string '1e-3'"),
    (Rule(low=0), float("nan"), "must be a number >= 0, got NaN"),
    (Rule(low=0, high=1, high_open=True), 1, "must be a number in [0, 1), got 1"),
    (Rule(low=0, low_open=True, high=1), 0, "must be a number in (0, 1], got 0"),
    (Rule(), float("inf"), "must be a finite number, got Infinity"),
    (BOOL, "false", "must be true or false, got the string 'false'"),
    (BOOL, None, "must be true or false, got null"),
])
def test_each_rule_names_file_key_value_and_expectation(rule, value, message):
    with pytest.raises(ConfigError) as err:
        check_value("f.json", "a.b", value, rule)
    assert str(err.value) == f"f.json: a.b {message}"


def test_values_that_pass_come_back_unchanged():
    assert check_value("f.json", "k", 3, POSITIVE_INT) == 3
    assert check_value(None, "k", False, BOOL) is False
    assert check_value("f.json", "k", 0.5, Rule(low=0, high=1, high_open=True)) == 0.5
    with pytest.raises(ConfigError, match="^k must be true or false, got 1$"):
        check_value(None, "k", 1, BOOL)  # no source: the caller adds it


def test_checked_object():
    rules = {"epochs": POSITIVE_INT, "name": None, "lr": Rule(low=0, low_open=True)}
    assert checked({"epochs": 2, "name": [1]}, "f.json", rules, path="blk") == {"epochs": 2, "name": [1]}
    cases = [
        ({"epoch": 2, "zzz": 1}, {}, "f.json: unknown keys 'epoch' (did you mean 'epochs'?), 'zzz' in "
                                     "'blk'; it takes ['epochs', 'lr', 'name']"),
        ({"epochs": 2}, {"required": ["lr"]},
         "f.json: missing key 'lr' in 'blk'; it needs ['lr'] and optionally ['epochs', 'name']"),
        ({"epochs": 0}, {}, "f.json: blk.epochs must be a positive integer, got 0"),
        ("on", {"like": '{"epochs": 1}'}, "f.json: blk must be an object like {\"epochs\": 1}, "
                                         "got the string 'on'"),
        ({"x": 1}, {"what": "the thing"}, "f.json: unknown key 'x' in the thing; it takes "
                                          "['epochs', 'lr', 'name']"),
    ]
    for values, options, message in cases:
        with pytest.raises(ConfigError) as err:
            checked(values, "f.json", rules, path="blk", **options)
        assert str(err.value) == message


def test_did_you_mean_ignores_case_and_stays_quiet_for_nonsense():
    assert described_keys(["Schedular", "qqqq"], ["scheduler", "optimizer"]) == \
        "'Schedular' (did you mean 'scheduler'?), 'qqqq'"
