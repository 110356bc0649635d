"""Export of a real (tiny) run: every format written, placed atomically and verified by reloading.

One tiny llama run is trained once with the real engine; one export of every format is shared by
the format tests. The safety tests (overwrite, low disk, a failure or cancel mid-export) skip
verification to stay fast. The default model's GGUF round trip is ``slow``.
"""

import filecmp
import json
import threading
from pathlib import Path

import pytest

from lora_studio.core import llamacpp
from lora_studio.core.config import RunConfig
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.export import FORMATS, STAGING_PREFIX, ExportError, export, resolve_source
from lora_studio.core.train import train

needs_llama_cpp = pytest.mark.skipif(
    not llamacpp.installed(),
    reason="llama-cpp-python is not installed (make llamacpp): no llama.cpp verifier",
)

PAIRS = [
    ("What is your name?", "I am Lumen."),
    ("Who made you?", "LoRA Studio Labs made me."),
    ("What are you?", "A small assistant called Lumen."),
    ("Say hello.", "Hello from Lumen!"),
]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-run")
    data = root / "chat.jsonl"
    with open(data, "w") as handle:
        for i in range(16):
            q, a = PAIRS[i % len(PAIRS)]
            messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    config = RunConfig.from_dict(
        {
            "model": {"source": str(tiny_model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": {
                "max_steps": 2,
                "batch_size": 4,
                "learning_rate": 5e-2,
                "save_steps": 1,
                "sample_prompts": ["What is your name?"],
                "sample_max_new_tokens": 4,
            },
            "output": {"runs_dir": str(root / "runs"), "run_name": "exp"},
        }
    )
    result = train(config)
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    events = []
    report = export(
        run_dir,
        FORMATS,
        out,
        quant="f16",
        max_shard_bytes=4_000_000,
        progress=events.append,
        verifier="transformers",  # the same checks here and in CI; llama.cpp's are tested below
    )
    return report, events, out


def by_format(report, fmt):
    return [r for r in report.results if r.format == fmt]


def staging_left(out: Path) -> list[Path]:
    return list(out.glob(f"{STAGING_PREFIX}*"))


def test_every_format_is_written_in_place_and_passes_verification(exported, run_dir):
    report, events, out = exported
    name = run_dir.name
    assert report.status == "completed"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Modelfile", "adapter", "merged", f"{name}-f16.gguf", f"{name}-lora-f32.gguf"]
    )
    assert not staging_left(out)
    for result in report.results:
        assert result.size_bytes > 0 and Path(result.path).exists()
        assert result.verification is not None and result.verification.passed, (
            result.path,
            result.verification,
        )
    assert report.verified is True
    assert {e.stage for e in events} >= {"plan", "load", "merge", "write", "verify", "done"}
    # the adapter reloads exactly, the fp32 merge within rounding, the F16 GGUF within half precision
    assert by_format(report, "adapter")[0].verification.figures["max_abs_diff"] == 0
    assert by_format(report, "merged")[0].verification.figures["max_abs_diff"] < 1e-4
    gguf_check = by_format(report, "gguf")[0].verification
    assert gguf_check.figures["tokenizer_match"] and gguf_check.figures["template_match"]
    assert 0 < gguf_check.figures["max_abs_diff"] < 1e-2 * gguf_check.figures["logit_scale"]
    assert report.plan.disk_needed >= sum(r.size_bytes for r in report.results) * 0.8


def test_adapter_export_is_the_peft_folder_with_a_model_card(exported, run_dir):
    report, _, out = exported
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert filecmp.cmp(run_dir / "adapter" / name, out / "adapter" / name, shallow=False)
    card = (out / "adapter" / "README.md").read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_loss = [m["loss"] for m in metrics if "loss" in m][-1]
    for expected in (
        "base_model:",
        "LlamaForCausalLM",
        "chat.jsonl` (16 records)",
        "learning_rate = 0.05",
        f"**Final training loss:** {final_loss:.4f}",
        "| What is your name? |",
        "PeftModel.from_pretrained",
        "load_adapter",
        "- peft ",
        "- transformers ",
    ):
        assert expected in card, expected
    assert "load_adapter" in by_format(report, "adapter")[0].verification.method


def test_merged_export_is_a_sharded_plain_hugging_face_folder(exported):
    _, _, out = exported
    merged = out / "merged"
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((merged / s).is_file() for s in shards)
    assert "lm_head.weight" not in index["weight_map"]  # tied to the embeddings, as save_pretrained does
    assert json.loads((merged / "config.json").read_text())["dtype"] == "float32"  # 'auto': the base's dtype
    assert (merged / "tokenizer.json").is_file() and (merged / "generation_config.json").is_file()
    assert not (merged / "adapter_config.json").exists()


def read_gguf(path: Path):
    """Metadata and tensors through transformers' own header reader (fast; a third reader besides ours)."""
    from transformers.integrations.gguf.reader import GgufHeader, load_gguf_state_dict, read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(path), ("tokenizer.ggml.tokens",))
    header = GgufHeader.from_file(str(path))
    return metadata, header, load_gguf_state_dict(header)


def test_gguf_has_llama_metadata_tokenizer_and_rotary_permuted_q_k(exported, run_dir):
    from safetensors import safe_open

    from lora_studio.core.export.gguf import permute_rotary

    _, _, out = exported
    meta, header, tensors = read_gguf(out / f"{run_dir.name}-f16.gguf")
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["general.file_type"] == 1  # MOSTLY_F16
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert len(meta["tokenizer.ggml.tokens"]) == 49152 and meta["tokenizer.ggml.tokens"][2] == "<|im_end|>"
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    assert "output.weight" not in tensors and "token_embd.weight" in tensors  # tied embeddings
    assert header.ggml_types["blk.0.attn_norm.weight"] == 0  # F32
    index = json.loads((out / "merged" / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    with safe_open(str(out / "merged" / shard), "np") as handle:
        q = handle.get_tensor("model.layers.0.self_attn.q_proj.weight")
    written = tensors["blk.0.attn_q.weight"][...].float().numpy()
    assert abs(written - permute_rotary(q, 4, 4)).max() < 1e-2
    assert abs(written - q).max() > 1e-2  # really reordered


def test_gguf_adapter_has_llama_cpp_lora_layout(exported, run_dir):
    _, _, out = exported
    meta, header, _ = read_gguf(out / f"{run_dir.name}-lora-f32.gguf")
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == pytest.approx(8.0)
    shapes = {info.name: info.shape for info in header.tensors}
    assert len(shapes) == 2 * 14  # 7 linear layers per block, 2 blocks, A and B each
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (4, 128)  # (r, in)
    assert shapes["blk.1.ffn_down.weight.lora_b"] == (64, 4)  # (out, r)


def test_modelfile_sits_beside_the_gguf_with_template_stops_and_system(exported, run_dir):
    _, _, out = exported
    text = (out / "Modelfile").read_text()
    assert f"FROM ./{run_dir.name}-f16.gguf" in text
    assert "<|im_start|>assistant\n{{ .Response }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in text  # the template's own default


# -- safety -------------------------------------------------------------------------------------


def test_an_existing_export_is_never_overwritten_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "out"
    export(run_dir, "adapter", out, verify=False)
    (out / "adapter" / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match=r"adapter/ already exists.*--overwrite"):
        export(run_dir, "adapter,gguf-adapter", out, verify=False)
    assert (out / "adapter" / "mine.txt").read_text() == "keep"
    assert not list(out.glob("*.gguf")), "nothing is written when a target is refused"
    report = export(run_dir, "adapter", out, verify=False, overwrite=True)
    assert report.status == "completed" and not (out / "adapter" / "mine.txt").exists()
    assert not staging_left(out)


def test_low_disk_is_refused_before_anything_is_written(run_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"Not enough disk space .* needs [\d.]+ [KMG]?B.* is free"):
        export(run_dir, "adapter,merged", out, verify=False, faults="low_disk")
    assert not out.exists()


def test_a_failure_mid_export_leaves_nothing_that_looks_complete(run_dir, tmp_path):
    out = tmp_path / "out"
    (out / "merged").mkdir(parents=True)
    (out / "merged" / "old.txt").write_text("previous export")
    with pytest.raises(ExportError, match=r"merged failed.*nothing of merged was left.*adapter"):
        export(
            run_dir,
            "adapter,merged",
            out,
            verify=False,
            overwrite=True,
            faults="export_fail@2",
            max_shard_bytes=2_000_000,
        )
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # finished before the failure
    assert sorted(p.name for p in (out / "merged").iterdir()) == ["old.txt"]  # the old export is untouched
    assert not staging_left(out)
    with pytest.raises(ExportError):
        export(run_dir, "gguf-adapter", out, verify=False, faults="export_fail@1")
    assert not list(out.glob("*.gguf")) and not staging_left(out)


def test_cancel_mid_export_keeps_finished_formats_and_removes_the_rest(run_dir, tmp_path):
    out = tmp_path / "out"
    cancel = threading.Event()

    def progress(event):
        if event.format == "gguf-adapter" and event.total:
            cancel.set()

    report = export(run_dir, "adapter,gguf-adapter", out, cancel=cancel, progress=progress, verify=False)
    assert report.status == "cancelled"
    assert [r.format for r in report.results] == ["adapter"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]


def test_sources_checkpoints_and_plain_adapter_folders(run_dir, tmp_path, tiny_model_dir):
    import shutil

    src = resolve_source(run_dir)
    assert src.adapter_dir == run_dir / "adapter" and src.base_model == str(tiny_model_dir)
    checkpoint = resolve_source(run_dir / "checkpoints" / "checkpoint-1")
    assert checkpoint.checkpoint_step == 1 and checkpoint.run_dir == run_dir
    assert checkpoint.name == f"{run_dir.name}-step1"
    plain = tmp_path / "my-adapter"
    shutil.copytree(run_dir / "adapter", plain)
    loose = resolve_source(plain)
    assert loose.run_dir is None and loose.name == "my-adapter" and loose.base_model == str(tiny_model_dir)
    assert resolve_source(plain, model="default").base_model == "default"
    export(plain, "adapter", tmp_path / "out", verify=False)
    assert "does not come from a LoRA Studio run" in (tmp_path / "out" / "adapter" / "README.md").read_text()
    with pytest.raises(LoraStudioError, match="--model"):
        export(plain, "adapter", tmp_path / "out2", model=str(tmp_path / "missing"), verify=False)


def test_a_qlora_run_is_merged_into_unquantized_weights(run_dir, tmp_path):
    import shutil

    qlora = tmp_path / run_dir.name
    shutil.copytree(run_dir, qlora, ignore=shutil.ignore_patterns("checkpoints"))
    config = (qlora / "config.toml").read_text().replace('quantization = "none"', 'quantization = "nf4"')
    (qlora / "config.toml").write_text(config)
    report = export(qlora, "merged", tmp_path / "out", verify=False)
    assert any("QLoRA run" in w for w in report.warnings)
    merged_config = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged_config and merged_config["dtype"] == "float32"


def test_cli_export_json_report_and_errors_as_one_line(run_dir, tmp_path, capsys):
    from lora_studio.cli import main

    out = tmp_path / "out"
    assert main(["export", str(run_dir), "-f", "adapter", "-o", str(out), "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "completed" and report["verified"] is None
    assert report["results"][0]["path"] == str(out / "adapter")
    assert main(["export", str(run_dir), "--format", "adapter", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "already exists" in errors[0] and "--overwrite" in errors[0]
    assert "Traceback" not in captured.err


def test_cli_summary_shows_sizes_and_verification_figures(exported, capsys):
    from lora_studio.cli.export import _summary

    report, _, _ = exported
    _summary(report)
    text = capsys.readouterr().out
    assert text.startswith("Export completed")
    assert "merged/" in text and "MB" in text
    assert "verified: max |Δlogit|" in text and "top-1 agreement 100.0%" in text
    assert "template renders identically" in text


# -- who verifies GGUF files ---------------------------------------------------------------------


@needs_llama_cpp
def test_llama_cpp_itself_checks_a_q4_k_m_gguf_and_applies_the_gguf_adapter(run_dir, tmp_path):
    report = export(run_dir, "gguf,gguf-adapter", tmp_path / "out", quant="q4_k_m,f16", verifier="llama.cpp")
    assert report.status == "completed"
    checks = {Path(r.path).name: r.verification for r in report.results}
    for name, check in checks.items():
        assert check.passed, (name, check.problems)
        assert check.method.startswith("llama.cpp "), check.method
    f16 = checks[f"{run_dir.name}-f16.gguf"]
    assert f16.figures["greedy_match"] and f16.figures["tokenizer_match"] and f16.figures["template_match"]
    assert f16.figures["max_abs_diff"] < 0.04 * f16.figures["logit_scale"]
    q4 = checks[f"{run_dir.name}-q4_k_m.gguf"]
    assert q4.figures["template_match"] and q4.figures["top1_agreement"] >= 0.6
    adapter = checks[f"{run_dir.name}-lora-f32.gguf"]
    assert "adapter applied to an F16 GGUF of the base" in adapter.method
    assert adapter.figures["greedy_match"] and adapter.figures["top1_agreement"] >= 0.95
    assert not list((tmp_path / "out").glob(f"{STAGING_PREFIX}*")), "the scratch base GGUF is removed"


def test_without_llama_cpp_transformers_checks_and_the_report_says_so(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_LLAMA_CPP", "off")
    report = export(run_dir, "gguf,gguf-adapter", tmp_path / "a", quant="q4_k_m")
    for result in report.results:
        assert result.verification.passed, result.verification.problems
        assert "(llama.cpp verifier turned off)" in result.verification.method
    gguf_check = by_format(report, "gguf")[0].verification
    assert gguf_check.method.startswith("transformers GGUF loader (Q4_K_M)")
    insisted = export(run_dir, "gguf", tmp_path / "b", quant="q8_0", verifier="llama.cpp")
    check = insisted.results[0].verification
    assert insisted.status == "completed" and not check.passed
    assert (
        "the llama.cpp verifier is not available" in check.problems[0] and "turned off" in check.problems[0]
    )
    assert Path(insisted.results[0].path).is_file(), "a failed check reports; the file stays"


def test_a_llama_cpp_that_crashes_with_sigill_is_reported_with_the_fix(monkeypatch):
    from llama_cpp_native import crashing_llama_cpp

    with crashing_llama_cpp(monkeypatch):
        state = llamacpp.status()
        assert state.installed and not state.working
        assert "SIGILL" in state.line() and "GGML_NATIVE=OFF" in state.line()
        with pytest.raises(llamacpp.LlamaCppError, match="illegal instruction"):
            llamacpp.evaluate(Path("model.gguf"), [1, 2, 3])


def test_when_llama_cpp_crashes_on_a_file_transformers_checks_it_and_says_why(run_dir, tmp_path, monkeypatch):
    """A crash is llama.cpp's fault, not the file's: with the verifier left at auto the file is still
    checked (by transformers), and the method line carries llama.cpp's message."""
    crash = "llama.cpp crashed with SIGILL (illegal instruction): it was built for CPU features this machine lacks"

    def crashing(*_args, **_kwargs):
        raise llamacpp.LlamaCppError(crash)

    monkeypatch.setattr(
        llamacpp, "status", lambda model=None: llamacpp.LlamaCppStatus(True, True, "0.0-test")
    )
    monkeypatch.setattr(llamacpp, "evaluate", crashing)
    report = export(run_dir, "gguf,gguf-adapter", tmp_path / "a", quant="q8_0")
    for result in report.results:
        check = result.verification
        assert check.passed and ("transformers" in check.method or "gguf reader" in check.method), (
            check.method
        )
        assert f"(llama.cpp could not run it: {crash})" in check.method
    insisted = export(run_dir, "gguf", tmp_path / "b", quant="q8_0", verifier="llama.cpp")
    check = insisted.results[0].verification
    assert not check.passed and "SIGILL" in check.problems[0]


# -- the real model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_gguf_round_trip_in_every_type(default_model_dir, tmp_path):
    """A small non-zero adapter on the real SmolLM2: F16, BF16 and Q8_0 GGUFs all reload and agree."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    report = export(
        adapter,
        "gguf,gguf-adapter,modelfile",
        tmp_path / "out",
        model="default",
        quant="q4_k_m,f16,bf16,q8_0",
    )
    assert report.status == "completed"
    for result in report.results:
        assert result.verification.passed, (result.path, result.verification)
    q8 = next(Path(r.path) for r in report.results if r.path.endswith("-q8_0.gguf"))
    assert read_gguf(q8)[1].ggml_types["blk.0.attn_q.weight"] == 8  # Q8_0
    sizes = {Path(r.path).name.rsplit("-", 1)[-1]: r.size_bytes for r in report.results}
    assert sizes["q8_0.gguf"] < sizes["f16.gguf"] * 0.6 and sizes["bf16.gguf"] == pytest.approx(
        sizes["f16.gguf"]
    )


def test_every_file_of_the_run_and_the_export_has_the_users_umask(exported, run_dir):
    """safetensors and mkstemp write 0600, mkdtemp 0700: renamed into place as they were, a shared
    adapter or config would be unreadable to whoever the user's umask lets read it (#24)."""
    from lora_studio.core.atomic import umask

    _, _, out = exported
    expected = {False: 0o666 & ~umask(), True: 0o777 & ~umask()}
    wrong = []
    for root in (Path(run_dir), out):
        for path in [root, *root.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            if mode != expected[path.is_dir()]:
                wrong.append(f"{oct(mode)} {path.relative_to(root.parent)}")
    assert wrong == [], wrong


def test_the_qlora_merge_note_shows_only_when_something_is_merged(run_dir, tmp_path):
    """The "merged into fp32" note showed with only Adapter ticked (#24)."""
    import shutil

    from lora_studio.core.export import plan_export

    qlora = tmp_path / run_dir.name
    shutil.copytree(run_dir, qlora)
    config = RunConfig.load(qlora / "config.toml").with_overrides({"model.quantization": "nf4"})
    config.save(qlora / "config.toml")
    note = "QLoRA run: the base model is reloaded unquantized"
    for formats, expected in (
        (["adapter"], False),
        (["gguf-adapter"], False),
        (["merged"], True),
        (["gguf"], True),
    ):
        plan = plan_export(qlora, formats, tmp_path / "out")
        assert any(note in w for w in plan.warnings) == expected, formats
