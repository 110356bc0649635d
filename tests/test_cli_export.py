"""``lora-studio export`` as a command line: GGUF types listed with their costs, Q4_K_M by default,
and an output folder that need not be named (the Export page's default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.export.types import DEFAULT_QUANT, QUANTS


@pytest.fixture(scope="module")
def run_folder(tiny_model_dir, tmp_path_factory) -> Path:
    """A run folder as the engine leaves it, as far as export reads it: config.toml and adapter/."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("runs") / "20250101-000000-cli"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(run / "adapter")
    RunConfig.from_dict({"model": {"source": str(tiny_model_dir)}}).save(run / "config.toml")
    return run


def test_quant_help_lists_every_type_and_the_default(capsys):
    from lora_studio.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_QUANT}" in text and DEFAULT_QUANT == "q4_k_m"
    assert ", ".join(QUANTS) in text and "--list-quants" in text


def test_list_quants_prints_size_memory_and_bits_for_every_type(run_folder, capsys):
    from lora_studio.cli import main

    assert main(["export", str(run_folder), "--list-quants"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4096-token context" in lines[0] and lines[1].split() == [
        "type",
        "on",
        "disk",
        "to",
        "run",
        "bits/weight",
    ]
    rows = {line.split()[0]: line for line in lines[2 : 2 + len(QUANTS)]}
    assert list(rows) == list(QUANTS)
    # the tiny model's 64-wide rows: every K-quant matrix falls back, and the listing says so
    notes = [line for line in lines[2 + len(QUANTS) :] if line.strip()]
    assert notes and all("not a multiple of 256" in line for line in notes)
    assert rows["q4_k_m"].endswith("(default)") and " MB " in rows["f16"]
    assert rows["f16"].split()[-1] == "16.00"
    assert not (run_folder / "export").exists()  # listing writes nothing

    assert main(["export", str(run_folder), "--list-quants", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["quants"]
    assert [q["quant"] for q in listed] == list(QUANTS)
    assert all(q["file_bytes"] < q["run_bytes"] for q in listed)


def test_export_needs_a_format_but_not_an_output_folder(run_folder, capsys):
    from lora_studio.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["export", str(run_folder)])
    assert exited.value.code == 2 and "--format" in capsys.readouterr().err
    assert main(["export", str(run_folder), "-f", "adapter", "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["out_dir"] == str((run_folder / "export").resolve())
    assert report["plan"]["quants"] == [DEFAULT_QUANT]
    assert (run_folder / "export" / "adapter" / "adapter_config.json").is_file()
