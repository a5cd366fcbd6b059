"""The pydantic-backed configs: every bad key, type or value is refused with the field named."""

import json

import pytest

from offline.config import ConfigError
from offline.errors import InputError
from offline.evaluation.protocol import EvalConfig
from offline.pipeline import BuildConfig


@pytest.mark.parametrize("data, msg", [
    ({"kk": 3}, "unknown key 'kk'"),
    ({"k": "5"}, "k: Input should be a valid integer"),
    ({"k": 0}, "k: Input should be greater than or equal to 1 (got 0)"),
    ({"k": True}, "k: Input should be a valid integer"),
    ({"on_failure": "retry"}, "on_failure: Input should be 'fallback', 'exclude' or 'abort'"),
    ({"generator": "gpt"}, "generator must be one of"),
    ({"embedder": "clip"}, "embedder: String should match pattern"),
    ({"l2_grid": [0.1, -1.0]}, "l2_grid.1: Input should be greater than 0"),
    ({"split_quantile": 1.5}, "split_quantile: Input should be less than 1"),
])
def test_build_config_names_the_bad_field(data, msg):
    with pytest.raises(ConfigError) as e:
        BuildConfig.from_dict(data)
    assert msg in str(e.value)
    assert isinstance(e.value, InputError) and isinstance(e.value, ValueError)


def test_build_config_round_trips_and_canonicalises_the_alias(tmp_path):
    cfg = BuildConfig.from_dict({"generator": "knn", "l2_grid": [0.1, 1.0], "k": 7})
    assert cfg.generator == "knn-content" and cfg.l2_grid == (0.1, 1.0)
    again = BuildConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError, match="k: Input should be greater than or equal to 1"):
        cfg.k = -1  # assignment is checked too
    assert cfg.k == 7


def test_config_files_with_problems_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        BuildConfig.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BuildConfig.from_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        BuildConfig.from_file(bad)


@pytest.mark.parametrize("kwargs, msg", [
    ({"seeds": 0}, "seeds: Input should be greater than or equal to 1"),
    ({"methods": ("lrwarm", "magic")}, "unknown method(s) ['magic']"),
    ({"generator": "claude"}, "generator: Input should be 'gemini' or 'openai'"),
    ({"llm_shots": (3, -1)}, "llm_shots.1: Input should be greater than or equal to 0"),
    ({"default_options": {"nope": 1}}, "unknown ContentKNNGenerator option 'nope'"),
])
def test_eval_config_names_the_bad_field(kwargs, msg):
    with pytest.raises(ConfigError) as e:
        EvalConfig(**kwargs)
    assert msg in str(e.value)
