"""Export pieces that need no trained run: Ollama templates, refusals, names and sizes."""

import pytest

from lora_studio.core.export import ExportError, parse_formats, parse_quants
from lora_studio.core.export.gguf import (
    GGUFExportError,
    check_adapter_settings,
    permute_rotary,
    plan_model_tensors,
)
from lora_studio.core.export.modelfile import LAYOUTS, choose_layout, parse_modelfile, render


def test_ollama_template_renderer_handles_if_end_trim_and_stops_at_response():
    template = "{{ if .System }}S:{{ .System }}\n{{- end }}{{ if .Prompt -}}\n  U:{{ .Prompt }}{{ end }} A:{{ .Response }}END"
    assert render(template, {"System": "sys", "Prompt": "hi"}) == "S:sysU:hi A:"
    assert render(template, {"Prompt": "hi"}) == "U:hi A:"
    assert render(template, {"Prompt": "hi", "Response": "yo"}, for_generation=False) == "U:hi A:yoEND"


def test_chatml_layout_is_chosen_for_smollm2_with_its_default_system_prompt(default_model_dir):
    from lora_studio.core.models import load_tokenizer

    layout, system, exact = choose_layout(load_tokenizer(default_model_dir))
    assert (layout.name, exact) == ("chatml", True)
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert [layout.name for layout in LAYOUTS][:2] == ["chatml", "llama3"]


def test_modelfile_parser_reads_multiline_template_and_stops():
    text = (
        'FROM ./m.gguf\nTEMPLATE """a\n{{ .Prompt }}"""\nSYSTEM """be nice"""\nPARAMETER stop "<|im_end|>"\n'
    )
    parsed = parse_modelfile(text)
    assert parsed["from"] == "./m.gguf" and parsed["template"] == "a\n{{ .Prompt }}"
    assert parsed["system"] == "be nice" and parsed["stops"] == ["<|im_end|>"]


def test_formats_and_quants_are_parsed_from_lists_and_comma_lists():
    assert parse_formats(["gguf,modelfile", "adapter"]) == ["adapter", "gguf", "modelfile"]
    assert parse_quants("q8_0, f16") == ["q8_0", "f16"]
    with pytest.raises(ExportError, match="unknown export format: onnx"):
        parse_formats("adapter,onnx")
    with pytest.raises(ExportError, match="q4_k"):
        parse_quants("q4_k")


def test_gguf_adapter_refuses_what_llama_cpp_cannot_express():
    with pytest.raises(GGUFExportError, match="DoRA"):
        check_adapter_settings({"use_dora": True, "peft_type": "LORA"})
    with pytest.raises(GGUFExportError, match="modules_to_save"):
        check_adapter_settings({"modules_to_save": ["lm_head"]})
    check_adapter_settings({"use_rslora": True, "alpha_pattern": {"q_proj": 4}})


def test_gguf_refuses_other_architectures_clearly(default_model_dir, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model("qwen2", num_hidden_layers=1)
    with pytest.raises(
        GGUFExportError, match=r"not supported for this architecture yet \(model_type 'qwen2'"
    ):
        plan_model_tensors({}, config, "f16")
    llama = AutoConfig.for_model(
        "llama",
        num_hidden_layers=1,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    with pytest.raises(GGUFExportError, match="rope scaling 'llama3'"):
        plan_model_tensors({}, llama, "f16")


def test_gguf_storage_types_follow_llama_cpp():
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "llama",
        num_hidden_layers=1,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    shapes = {
        "model.embed_tokens.weight": (100, 64),
        "model.layers.0.self_attn.q_proj.weight": (64, 64),
        "model.layers.0.mlp.down_proj.weight": (64, 48),
        "model.layers.0.input_layernorm.weight": (64,),
        "lm_head.weight": (100, 64),
    }
    planned = {t.name: t for t in plan_model_tensors(shapes, config, "q8_0")}
    assert "output.weight" not in planned  # tied
    assert planned["blk.0.attn_q.weight"].qtype == "Q8_0" and planned["blk.0.attn_q.weight"].permute == "q"
    assert planned["blk.0.ffn_down.weight"].qtype == "F16"  # 48 columns: not a whole number of Q8_0 blocks
    assert planned["blk.0.attn_norm.weight"].qtype == "F32"
    assert planned["blk.0.attn_q.weight"].nbytes == 64 * 64 // 32 * 34


def test_rotary_permutation_is_undone_by_transformers_gguf_reader():
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    reader = LlamaTensorProcessor(config={"num_attention_heads": 8, "num_key_value_heads": 2})
    for name, heads in (("blk.0.attn_q.weight", 8), ("blk.0.attn_k.weight", 2)):
        rows = np.arange(heads * 16 * 3, dtype=np.float32).reshape(heads * 16, 3)
        back = reader.process(weights=permute_rotary(rows, 8, heads), name=name).weights
        assert np.array_equal(back, rows)
