"""Settings: camelCase JSON -> one typed object; bad keys fall back to defaults and are named, never raise."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dg_lsp.settings import ContextSettings, Settings, camel, parse_settings, to_json


def test_defaults():
    s, bad = parse_settings(None)
    assert s == Settings() and bad == []
    assert s.context == ContextSettings()
    assert s.enabled_for("python")


def test_camel_case_keys_and_nested_context():
    s, bad = parse_settings(
        {
            "model": "/models/dg",
            "device": "cpu",
            "quantize": "4bit",
            "enable": {"python": False},
            "context": {"maxPromptTokens": 1024, "suffixShare": 0.3, "snippetShare": 0.1},
            "maxLineTokens": 32,
            "maxBlockTokens": 128,
            "candidates": 3,
            "debounceMs": 0,
            "temperature": 0.7,
            "seed": 7,
            "logLevel": "debug",
            "decoding": "ar",
        }
    )
    assert bad == []
    assert s.decoding == "ar"
    assert (s.model, s.device, s.quantize) == ("/models/dg", "cpu", "4bit")
    assert (s.candidates, s.seed, s.log_level) == (3, 7, "debug")
    assert s.context.max_prompt_tokens == 1024 and s.context.suffix_share == 0.3
    assert s.context.max_snippets == 3  # unspecified nested keys keep their default
    assert not s.enabled_for("python") and s.enabled_for("go")


def test_section_wrapper_is_accepted():
    s, bad = parse_settings({"dg": {"candidates": 2}, "python": {"other": "tool"}})
    assert bad == [] and s.candidates == 2


def test_wildcard_enable():
    s, _ = parse_settings({"enable": {"*": False, "python": True}})
    assert s.enabled_for("python") and not s.enabled_for("rust")


def test_merges_over_the_command_line_base():
    base = Settings(model="/cli/model", device="cuda")
    s, bad = parse_settings({"candidates": 2}, base)
    assert bad == [] and (s.model, s.device, s.candidates) == ("/cli/model", "cuda", 2)


def test_null_means_not_set():
    base = Settings(model="/cli/model")
    s, bad = parse_settings({"model": None, "temperature": None}, base)
    assert bad == [] and s.model == "/cli/model"


def test_bad_keys_get_defaults_and_are_named():
    s, bad = parse_settings(
        {
            "device": "gpu",  # not one of the choices
            "candidates": "many",  # wrong type
            "debounceMs": True,  # booleans are not numbers
            "bogus": 1,  # unknown
            "context": {"maxPromptTokens": -5, "suffixShare": "x", "extra": 0},  # out of range, wrong type, unknown
            "enable": {"python": "yes", "go": False},
            "seed": 3,  # valid keys next to bad ones survive
        }
    )
    assert bad == [
        "bogus",
        "candidates",
        "context.extra",
        "context.maxPromptTokens",
        "context.suffixShare",
        "debounceMs",
        "device",
        "enable.python",
    ]
    assert s.device == "auto" and s.candidates == 1 and s.debounce_ms == Settings().debounce_ms
    assert s.context == ContextSettings()
    assert s.enable == {"go": False} and s.seed == 3


def test_wrong_shapes():
    assert parse_settings([1, 2])[1] == ["dg"]
    assert parse_settings("fast")[1] == ["dg"]
    s, bad = parse_settings({"context": 5})
    assert bad == ["context"] and s.context == ContextSettings()
    s, bad = parse_settings({"enable": ["python"]})
    assert bad == ["enable"] and s.enable == {}


def test_non_finite_numbers_are_rejected():
    s, bad = parse_settings({"temperature": float("nan"), "renoise": float("inf")})
    assert bad == ["renoise", "temperature"] and s.temperature is None and s.renoise == Settings().renoise


def test_range_checks_keep_the_base_value():
    base = Settings(candidates=2)
    s, bad = parse_settings({"candidates": 99, "temperature": -1.0}, base)
    assert bad == ["candidates", "temperature"] and s.candidates == 2 and s.temperature is None


def test_round_trip_through_json():
    s = Settings(model="m", enable={"go": False}, context=ContextSettings(max_prompt_tokens=100), seed=1)
    assert parse_settings(to_json(s)) == (s, [])
    assert set(to_json(s)) == {camel(f.name) for f in dataclasses.fields(Settings)}


def test_engine_key_names_what_needs_a_reload():
    a, _ = parse_settings({"candidates": 2})
    b, _ = parse_settings({"model": "other"})
    assert a.engine_key == Settings().engine_key != b.engine_key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
known_keys = st.sampled_from([camel(f.name) for f in dataclasses.fields(Settings)] + ["context", "dg"])


@hsettings(max_examples=200, deadline=None)
@given(st.dictionaries(known_keys | st.text(max_size=6), json_values, max_size=6) | json_values)
def test_any_json_gives_settings_and_never_raises(raw):
    s, bad = parse_settings(raw)
    assert isinstance(s, Settings) and isinstance(bad, list)
    # Whatever survived is well-typed: the result serializes and parses back without complaints.
    assert parse_settings(to_json(s)) == (s, [])


def test_an_unknown_decoding_keeps_auto_and_is_named():
    s, bad = parse_settings({"decoding": "fast"})
    assert s.decoding == "auto" and any("decoding" in b for b in bad)


def test_decoding_choices_are_the_engines_and_settings_need_no_torch():
    import subprocess
    import sys
    import typing

    from dg_model.api import DECODINGS
    from dg_model.engine import MODES

    offered = typing.get_args(typing.get_type_hints(Settings)["decoding"])
    assert offered == DECODINGS == MODES
    for mode in offered:
        assert parse_settings({"decoding": mode}) == (dataclasses.replace(Settings(), decoding=mode), [])
    # The server's settings load before (and without) the model stack.
    check = "import sys, dg_lsp.settings; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)


def test_context_budget_comes_from_the_settings():
    from dg_lsp.pipeline import budget_of

    s, bad = parse_settings(
        {"context": {"maxPromptTokens": 1000, "maxSnippets": 1}, "maxLineTokens": 7, "maxBlockTokens": 70}
    )
    assert bad == []
    for settings in (Settings(), s):
        b = budget_of(settings)
        c = settings.context
        assert (b.max_prompt_tokens, b.suffix_share, b.snippet_share, b.max_snippets) == (
            c.max_prompt_tokens,
            c.suffix_share,
            c.snippet_share,
            c.max_snippets,
        )
        assert (b.line_tokens, b.block_tokens) == (settings.max_line_tokens, settings.max_block_tokens)
    assert budget_of(s, reserve_tokens=100).max_prompt_tokens == 900
