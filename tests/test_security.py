"""No code from downloaded files runs unless the user opts in for that model."""

import json
import pickle
import shutil

import pytest

from lora_studio.core.errors import ModelSourceError
from lora_studio.core.models import load_model, model_info, resolve_model


class _WritesMarker:
    """Unpickling this object writes a file: proof that pickle code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_remote_code_is_refused_without_opt_in_and_never_runs(tmp_path, tiny_model_dir):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "remote-code-ran"
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="sneaky",
        auto_map={
            "AutoConfig": "configuration_sneaky.SneakyConfig",
            "AutoModelForCausalLM": "modeling_sneaky.SneakyModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_sneaky.py").write_text(code)
    (folder / "modeling_sneaky.py").write_text(code)
    with pytest.raises(ModelSourceError, match="ships its own Python code") as info:
        model_info(str(folder))
    assert "trust_remote_code" in info.value.hint
    with pytest.raises(ModelSourceError):
        load_model(str(folder))
    assert not marker.exists()


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_model_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    marker = tmp_path / "pickle-ran"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _WritesMarker(marker)}, handle)
    with pytest.raises(ModelSourceError, match="pickle"):
        resolve_model(str(folder))
    with pytest.raises(ModelSourceError):
        load_model(str(folder))
    assert not marker.exists()


def test_even_allowed_pickles_load_with_weights_only(tmp_path, tiny_model_dir):
    """With --allow-pickle, torch.load(weights_only=True) still refuses code objects."""
    folder = tmp_path / "pickled-allowed"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    marker = tmp_path / "pickle-ran-allowed"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": _WritesMarker(marker)}, handle)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; what matters is the marker
        load_model(str(folder), allow_pickle=True)
    assert not marker.exists()


def test_project_code_never_calls_torch_load_without_weights_only():
    from pathlib import Path

    import lora_studio

    root = Path(lora_studio.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}:{number}")
    assert offenders == []


def test_dataset_loading_never_runs_scripts(tmp_path):
    """A folder with a dataset loading script is read as data files only; the script never runs."""
    from lora_studio.core.config import DataSection
    from lora_studio.core.data import load_conversations

    folder = tmp_path / "ds"
    folder.mkdir()
    marker = tmp_path / "script-ran"
    (folder / "ds.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (folder / "train.jsonl").write_text(json.dumps(record) + "\n")
    conversations, _ = load_conversations(DataSection(path=str(folder)))
    assert len(conversations) == 1
    assert not marker.exists()
