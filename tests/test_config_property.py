"""Bad input never crashes: random values and types for every config field give ConfigError or a config."""

import math
import tomllib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError

SECTIONS = {
    name: list(field.annotation.model_fields)
    for name, field in RunConfig.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@st.composite
def configs(draw):
    data = {}
    for section, names in SECTIONS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))
            data[section] = {name: draw(values) for name in chosen}
            if draw(st.integers(0, 9)) == 0:
                data[section][draw(st.text(min_size=1, max_size=6))] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return data


CASES = {"tried": 0, "valid": 0}


@settings(max_examples=300, deadline=None)
@given(configs())
@example({"training": {"weight_decay": float("nan")}})
@example({"training": {"max_grad_norm": float("inf")}})
@example({"output": {"runs_dir": "\U00018d09"}})  # beyond U+FFFF: TOML's \\u takes 4 hex digits only
def test_random_configs_give_a_config_or_a_located_config_error(data):
    CASES["tried"] += 1
    try:
        config = RunConfig.from_dict(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(k, str) and k for k in exc.problems)
        return
    CASES["valid"] += 1
    for section in config.to_dict().values():
        if isinstance(section, dict):
            for name, value in section.items():
                assert not isinstance(value, float) or math.isfinite(value), name
    assert RunConfig.from_dict(tomllib.loads(config.to_toml())) == config


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_as_a_config_file(tmp_path_factory, payload):
    path = tmp_path_factory.mktemp("cfg") / "run.toml"
    path.write_bytes(payload)
    try:
        RunConfig.load(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    config, notes = RunConfig.load_lenient(path)  # never raises
    assert isinstance(config, RunConfig) and isinstance(notes, list)
