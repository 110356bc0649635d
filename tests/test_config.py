import tomllib
from pathlib import Path

import pytest
import tomli_w

from lora_studio.core.config import RunConfig, field_docs
from lora_studio.core.errors import ConfigError


def test_defaults_round_trip_through_toml_exactly(tmp_path):
    config = RunConfig()
    path = tmp_path / "run.toml"
    config.save(path)
    assert RunConfig.load(path) == config
    assert path.read_text() == config.to_toml()


def test_non_default_values_round_trip(tmp_path):
    config = RunConfig.from_dict(
        {
            "model": {"source": "/models/x", "quantization": "nf4", "double_quant": True},
            "lora": {"r": 8, "alpha": 16.5, "target_modules": ["q_proj", "v_proj"], "use_dora": True},
            "data": {
                "path": 'a "quoted"\\path\n.jsonl',
                "columns": {"instruction": "question"},
                "system_prompt": "Be brief.\tOK",
                "eval_fraction": 0.1,
            },
            "training": {"max_steps": 30, "learning_rate": 1.5e-5, "sample_prompts": ["ünïcode ✓"]},
            "output": {"run_name": "demo"},
        }
    )
    path = tmp_path / "run.toml"
    config.save(path)
    loaded = RunConfig.load(path)
    assert loaded == config
    assert tomllib.loads(config.to_toml())["lora"]["target_modules"] == ["q_proj", "v_proj"]


def test_every_bad_field_is_listed_by_dotted_name():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(
            {
                "model": {"quantization": "q3"},
                "lora": {"r": 0},
                "training": {"learning_rate": -1, "batch_size": 0},
                "colour": "blue",
            }
        )
    problems = info.value.problems
    assert set(problems) == {
        "model.quantization",
        "lora.r",
        "training.learning_rate",
        "training.batch_size",
        "colour",
    }
    assert "nf4" in problems["model.quantization"]
    assert "not a known setting" in problems["colour"]
    message = str(info.value)
    for name in problems:
        assert name in message


def test_unknown_key_inside_a_section_is_refused():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"training": {"learning_rte": 1e-4}})
    assert "training.learning_rte" in info.value.problems


def test_sequence_length_over_the_model_context_is_refused():
    config = RunConfig.from_dict({"data": {"max_seq_len": 4096}})
    config.check_against_model(8192)
    with pytest.raises(ConfigError) as info:
        config.check_against_model(2048)
    assert "data.max_seq_len" in info.value.problems


def test_double_quant_without_4bit_is_refused():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"model": {"quantization": "int8", "double_quant": True}})
    assert "model.double_quant" in info.value.problems


def test_broken_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[training\nlr = 1")
    with pytest.raises(ConfigError) as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)


def test_overrides_use_dotted_names_and_validate():
    config = RunConfig().with_overrides({"training.learning_rate": 1e-4, "lora.r": 4})
    assert config.training.learning_rate == 1e-4 and config.lora.r == 4
    with pytest.raises(ConfigError):
        RunConfig().with_overrides({"lora.r": -1})
    with pytest.raises(ConfigError):
        RunConfig().with_overrides({"nothing.here": 1})


def test_every_field_is_documented_for_tooltips():
    docs = field_docs()
    assert "training.learning_rate" in docs
    assert all(text.strip() for text in docs.values()), [k for k, v in docs.items() if not v.strip()]


def test_toml_writer_escapes_control_characters():
    config = RunConfig.from_dict({"data": {"system_prompt": "a\x01b\U00018d09"}})
    assert tomllib.loads(config.to_toml())["data"]["system_prompt"] == "a\x01b\U00018d09"


def test_a_config_written_by_the_old_hand_written_writer_still_loads():
    """The TOML writer moved to tomli-w; files users already have must read back the same."""
    old = Path(__file__).parent / "data" / "config-written-by-0.x.toml"
    config = RunConfig.load(old)
    assert config.data.system_prompt == "Tab\there, newline\nthere, \U00018d09 and \x01"
    assert config.data.columns == {"instruction": "question", "output": 'answer "quoted"'}
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.training.sample_prompts == ["Hi", "Ça va?"]
    assert (config.training.epochs, config.training.learning_rate) == (1.5, 2e-4)
    assert RunConfig.from_dict(tomllib.loads(config.to_toml())) == config


def test_a_saved_config_has_the_umask_mode_and_a_restricted_one_stays_restricted(tmp_path):
    import os

    from lora_studio.core.atomic import umask

    path = tmp_path / "run.toml"
    RunConfig().save(path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0600
    os.chmod(path, 0o600)  # the user made it private on purpose
    RunConfig().save(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_config_from_before_preference_tuning_reads_without_notes_about_it(tmp_path):
    """Runs saved before ``training.method`` and ``[preference]`` existed were SFT runs, which is what
    the defaults say: the Runs page must not call every such run "changed"."""
    data = tomllib.loads(RunConfig().to_toml())
    del data["preference"]
    del data["training"]["method"]
    for added_later in ("role_map", "positive_only"):  # the data settings of #25, off by default
        data["data"].pop(added_later, None)
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps(data))
    config, notes = RunConfig.load_lenient(path)
    assert config == RunConfig() and notes == []
    del data["training"]["epochs"]  # a setting that did exist: still reported
    path.write_text(tomli_w.dumps(data))
    assert RunConfig.load_lenient(path)[1] == ["training.epochs is missing; default used"]
