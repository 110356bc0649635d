import json
import shutil
import subprocess
import sys

import pytest


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lora_studio", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("lora-studio ")


def test_info_default_json(default_model_dir):
    result = run_cli("info", "default", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["parameters"] == 134_515_008
    assert info["tie_word_embeddings"] is True and info["chat_template"] is True
    assert info["path"] == str(default_model_dir)


def test_info_human_output(tiny_model_dir):
    result = run_cli("info", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    assert "Parameters" in result.stdout and "Layers           2" in result.stdout


def test_info_missing_path_is_one_clear_line():
    result = run_cli("info", "/nonexistent")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such file or folder" in lines[0]
    assert "Traceback" not in result.stderr


def test_info_pickle_only_folder_is_one_clear_line(tmp_path, tiny_model_dir):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"x")
    result = run_cli("info", str(folder))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pickle" in lines[0]


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag):
    assert run_cli(flag).returncode == 0
