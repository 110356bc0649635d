import json
import os
import shutil
import subprocess
import sys

import pytest

from lora_studio.core.errors import ModelSourceError
from lora_studio.core.models import (
    converted_gguf_folder,
    default_model_gguf,
    load_config,
    load_model,
    model_info,
    resolve_model,
)


def test_default_model_info_matches_the_real_model(default_model_dir):
    info = model_info("default")
    assert info.parameters == 134_515_008
    assert info.tie_word_embeddings is True
    assert info.chat_template is True
    assert (info.layers, info.hidden_size, info.vocab_size) == (30, 576, 49152)
    assert (info.heads, info.kv_heads, info.head_dim) == (9, 3, 64)
    assert info.path == str(default_model_dir)


def test_default_conversion_is_cached_as_a_complete_folder(default_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "lora_studio_source.json"):
        assert (default_model_dir / name).is_file(), name
    assert resolve_model("default").path == default_model_dir
    # no half-written temporary folders are left beside it
    leftovers = [p for p in default_model_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_tiny_folder_parameter_count_equals_the_loaded_model(tiny_model_dir):
    info = model_info(str(tiny_model_dir))
    model, _tokenizer = load_model(str(tiny_model_dir), "none", "fp32")
    loaded = sum(p.numel() for p in model.parameters())
    assert info.parameters == loaded
    assert info.kind == "folder" and info.layers == 2


def test_untied_tiny_model_counts_the_separate_head(tmp_path, default_model_dir):
    from conftest import make_tiny_model

    tied = model_info(str(make_tiny_model(tmp_path / "tied", default_model_dir, tie=True)))
    untied = model_info(str(make_tiny_model(tmp_path / "untied", default_model_dir, tie=False)))
    assert untied.parameters - tied.parameters == 49152 * 64


def test_missing_path_is_a_clear_error():
    with pytest.raises(ModelSourceError, match="no such file or folder"):
        resolve_model("/nonexistent/model")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_folder_with_only_pickled_weights_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelSourceError, match="pickle"):
        resolve_model(str(folder))
    assert resolve_model(str(folder), allow_pickle=True).path == folder.resolve()


def test_unknown_architecture(tmp_path, tiny_model_dir):
    folder = tmp_path / "alien"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "alien_transformer"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="alien_transformer"):
        model_info(str(folder))


def test_truncated_safetensors(tmp_path, tiny_model_dir):
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match="truncated"):
        resolve_model(str(folder))
    weights.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelSourceError, match="corrupt safetensors"):
        resolve_model(str(folder))


def test_truncated_gguf(tmp_path):
    broken = tmp_path / "broken.gguf"
    with open(default_model_gguf(), "rb") as handle:
        broken.write_bytes(handle.read(4096))
    with pytest.raises(ModelSourceError, match="corrupt or truncated GGUF"):
        resolve_model(str(broken))
    assert not converted_gguf_folder(broken).exists()


def test_gguf_of_an_unsupported_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "oddformer")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError, match="'oddformer' is not supported"):
        resolve_model(str(path))


def test_non_gguf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelSourceError, match="not a .gguf"):
        resolve_model(str(path))


def test_hub_id_not_in_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelSourceError, match="not in the local Hugging Face cache"):
        resolve_model("someorg/some-model")


def test_hub_id_found_in_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    hub = tmp_path / "hub"
    snapshot = hub / "models--someorg--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (hub / "models--someorg--tiny" / "refs").mkdir()
    (hub / "models--someorg--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    resolved = resolve_model("someorg/tiny")
    assert resolved.kind == "hub" and resolved.path == snapshot


@pytest.mark.slow
def test_gguf_file_conversion_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    gguf_copy = tmp_path / "copy.gguf"
    os.symlink(default_model_gguf(), gguf_copy)
    folder = resolve_model(str(gguf_copy)).path
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(gguf_copy)).path == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


#: The child holds the conversion once all its files are written, before its marker and rename: a
#: kill there is the last moment a non-atomic conversion could leave a folder that looks complete.
#: Waiting for "converted" instead of a fixed number of seconds keeps a fast machine from finishing
#: the conversion before the kill.
CONVERT_THEN_HOLD = """
import time
from lora_studio.core import models

convert = models._convert_gguf

def convert_then_hold(gguf_path, out):
    convert(gguf_path, out)
    print("converted", flush=True)
    time.sleep(600)

models._convert_gguf = convert_then_hold
models.resolve_model("default")
"""


@pytest.mark.slow
def test_killed_conversion_leaves_no_valid_looking_folder(tmp_path):
    """Kill the conversion with every file written but not yet moved into place: the next run must
    not mistake the leftovers for a model."""
    env = dict(os.environ, LORA_STUDIO_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-c", CONVERT_THEN_HOLD], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"converted\n"  # the child holds from here on
    finally:
        proc.kill()
        proc.wait()
    models = tmp_path / "cache" / "models"
    work = [p for p in models.iterdir() if p.name.startswith(".")]
    assert any((p / "model.safetensors").is_file() for p in work)  # killed late: the weights were written
    final = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert final == []


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["none", "int8", "nf4"])
def test_default_model_loads_quantized_and_answers(quant, default_model_dir):
    model, tokenizer = load_model("default", quant)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    if quant == "nf4":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if quant == "int8":
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())


def test_four_bit_layout_puts_repacked_weights_back_exactly():
    """Eval on an AVX512-BF16 CPU repacks a 4-bit layer for inference; training needs it back
    exactly as quantized (bitsandbytes' own inverse leaves non-nested scales transposed)."""
    import bitsandbytes as bnb
    import torch
    from bitsandbytes.functional import dequantize_4bit

    from lora_studio.core.models import FourBitLayout

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 128, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    layer.load_state_dict({"weight": torch.randn(128, 256)})
    layer = layer.to("cpu")  # quantizes
    model = torch.nn.Sequential(layer)
    original = dequantize_4bit(layer.weight.data, layer.weight.quant_state).clone()
    layout = FourBitLayout(model)
    x = torch.randn(1, 256)
    model.eval()  # on a CPU with AVX512-BF16 (this project's machines) the forward repacks
    with torch.no_grad():
        model(x)
    repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert layout.restore() == int(repacked)
    model.train()
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert torch.equal(dequantize_4bit(layer.weight.data, layer.weight.quant_state), original)
    y = model(x.requires_grad_())
    y.sum().backward()  # the training kernel, with its gradient
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_building_models_in_several_threads_leaves_torch_global_state_alone(
    default_model_dir, tiny_model_dir
):
    """transformers switches torch's default dtype (and patches tie_weights, linspace) while it builds
    a model, and the GUI builds in several workers at once (model facts, estimates, training, chat).
    Before the construction lock, two concurrent meta builds left the default dtype at bf16 for good;
    before meta builds stopped asking for the config's dtype, a third thread saw bf16 meanwhile."""
    import threading

    import torch
    from transformers import PreTrainedModel

    from lora_studio.core.models import load_model, meta_model

    config = load_config(default_model_dir)  # bf16 in its config.json
    assert config.dtype == torch.bfloat16
    tie_weights, linspace = PreTrainedModel.tie_weights, torch.linspace
    errors: list[BaseException] = []

    def in_threads(work, count: int) -> None:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors

    # meta builds (what the GUI's background tasks do, also while a run trains): invisible elsewhere
    seen: set[torch.dtype] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.0005):  # a sample every ~0.5 ms, leaving the builders the GIL
            seen.add(torch.get_default_dtype())

    watcher = threading.Thread(target=watch)
    watcher.start()
    in_threads(lambda: [meta_model(config) for _ in range(6)], 3)
    stop.set()
    watcher.join()
    assert seen == {torch.float32}
    assert config.dtype == torch.bfloat16  # built from a copy: the caller's config is untouched
    # real loads in bf16 at once (training + chat + evaluation): everything put back afterwards
    in_threads(lambda: load_model(str(tiny_model_dir), dtype="bf16", device="cpu"), 3)
    assert torch.get_default_dtype() == torch.float32
    assert PreTrainedModel.tie_weights is tie_weights and torch.linspace is linspace
