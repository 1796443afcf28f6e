"""Sampling settings: mlx-lm's defaults, presets, and clear refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import BadSetting
from engine.sampling import PRESETS, SamplingParams, parse_value, preset


def test_defaults_are_mlx_lms():
    from mlx_lm.generate import DEFAULT_MIN_P, DEFAULT_TEMP, DEFAULT_TOP_K, DEFAULT_TOP_P

    p = SamplingParams()
    assert (p.temperature, p.top_p, p.min_p, p.top_k) == (
        DEFAULT_TEMP, DEFAULT_TOP_P, DEFAULT_MIN_P, DEFAULT_TOP_K)


@pytest.mark.parametrize("name, value, allowed", [
    ("temperature", -0.1, "0 to 5"), ("top_p", 0.0, "above 0"), ("min_p", 1.5, "0 to 1"),
    ("top_k", -1, "from 0"), ("repetition_penalty", 0.5, "from 1"), ("max_tokens", 0, "1 to"),
    ("seed", -3, "from 0"), ("temperature", float("nan"), "0 to 5"), ("top_k", 2.5, "whole"),
])
def test_out_of_range_values_say_what_is_allowed(name, value, allowed):
    with pytest.raises(BadSetting) as exc:
        SamplingParams().with_values(**{name: value})
    assert name in str(exc.value) and allowed in str(exc.value)


def test_a_refused_change_changes_nothing():
    p = SamplingParams(temperature=0.5)
    with pytest.raises(BadSetting):
        p.with_values(temperature=0.9, top_p=7)
    assert p.temperature == 0.5


def test_presets_are_valid_and_named():
    assert set(PRESETS) == {"precise", "balanced", "creative", "code"}
    assert preset("creative", max_tokens=99).max_tokens == 99
    with pytest.raises(BadSetting, match="choose one of"):
        preset("wild")


def test_parse_value():
    assert parse_value("top_k", "40") == 40
    assert parse_value("seed", "none") is None
    with pytest.raises(BadSetting, match="not a number"):
        parse_value("temperature", "hot")
    with pytest.raises(BadSetting, match="unknown setting"):
        parse_value("warmth", "1")


@given(st.dictionaries(st.sampled_from(["temperature", "top_p", "min_p", "top_k", "seed",
                                        "repetition_penalty", "max_tokens"]),
                       st.one_of(st.floats(allow_nan=True), st.integers(), st.none(),
                                 st.text(max_size=3))))
def test_any_values_give_a_valid_setting_or_a_clear_error(values):
    try:
        p = SamplingParams().with_values(**values)
    except BadSetting as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert 0 <= p.temperature <= 5 and 0 < p.top_p <= 1 and p.max_tokens >= 1
