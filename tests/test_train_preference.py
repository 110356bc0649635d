"""Preference tuning (DPO, KTO, ORPO, SimPO) through the same engine, on the tiny model.

Each method must learn (its loss falls), resume exactly, and — for DPO and KTO — compare with a
reference that really is the base model with the adapter switched off, or base + the adapter the
run started from. QLoRA runs for real on the CPU.
"""

import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError, DatasetError
from lora_studio.core.runs import RunFolder
from lora_studio.core.train import events as ev
from lora_studio.core.train import resume, train


class Recorder:
    def __init__(self, on_step=None):
        self.events: list[ev.Event] = []
        self.on_step = on_step

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, ev.Step) and self.on_step:
            self.on_step(event)

    def steps(self) -> list[ev.Step]:
        return [e for e in self.events if isinstance(e, ev.Step)]


def write_pairs(path: Path, n: int = 16) -> Path:
    """Distinct prompts: each batch differs, so a resumed run that trained other batches would show."""
    rows = [
        {"prompt": f"Question {i}?", "chosen": f"Yes, answer {i} is clear.", "rejected": "No."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_labels(path: Path, n: int = 16) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}?"}],
            "completion": [{"role": "assistant", "content": "Yes, happily." if i % 2 else "No."}],
            "label": bool(i % 2),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_config(model_dir: Path, data: Path, runs: Path, method: str, **training) -> RunConfig:
    settings = {
        "method": method,
        "max_steps": 6,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "save_steps": 3,
        "sample_prompts": [],
        **training,
    }
    return RunConfig.from_dict(
        {
            "model": {"source": str(model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": settings,
            "output": {"runs_dir": str(runs), "run_name": method},
        }
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    return write_labels(tmp_path_factory.mktemp("labels") / "labels.jsonl")


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo"])
def test_each_method_learns_and_reports_its_rewards(method, tiny_model_dir, pairs, labels, tmp_path):
    recorder = Recorder()
    data = labels if method == "kto" else pairs
    result = train(make_config(tiny_model_dir, data, tmp_path / "runs", method), recorder)
    assert result.status == "completed" and result.step == 6
    steps = recorder.steps()
    assert [s.step for s in steps] == list(range(1, 7))
    assert steps[-1].loss < steps[0].loss
    last = steps[-1].preference
    assert last["reward_margin"] > steps[0].preference["reward_margin"]
    if method == "kto":
        assert "kl" in last and "reward_accuracy" not in last
    else:
        assert 0.0 <= last["reward_accuracy"] <= 1.0
    if method in ("dpo", "kto"):  # the policy starts as the reference: no reward yet
        assert steps[0].preference["reward_chosen"] == pytest.approx(0.0, abs=1e-5)
    run = RunFolder.open(result.run_dir)
    rows = [m for m in run.metrics() if "loss" in m]
    assert rows[-1]["reward_margin"] == pytest.approx(last["reward_margin"])
    assert not (run.adapter_dir / "ref").exists()  # the saved adapter is the trained one only
    started = next(e for e in recorder.events if isinstance(e, ev.RunStarted))
    assert started.config["training"]["method"] == method
    assert started.dataset["method"] == method


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo"])
def test_a_preference_run_resumes_with_the_losses_of_an_uninterrupted_run(
    method, tiny_model_dir, pairs, labels, tmp_path
):
    settings = {"max_steps": 6, "save_steps": 2}
    data = labels if method == "kto" else pairs
    full = Recorder()
    train(make_config(tiny_model_dir, data, tmp_path / "a", method, **settings), full)

    cancel = threading.Event()
    first = Recorder(on_step=lambda e: e.step == 4 and cancel.set())
    stopped = train(
        make_config(tiny_model_dir, data, tmp_path / "b", method, **settings), first, cancel=cancel
    )
    assert stopped.status == "cancelled" and stopped.step == 4
    resumed = resume(stopped.run_dir, Recorder())
    assert resumed.status == "completed" and resumed.step == 6
    got = {m["step"]: m for m in RunFolder.open(stopped.run_dir).metrics() if "loss" in m}
    for step in full.steps():
        assert got[step.step]["loss"] == pytest.approx(step.loss, rel=1e-4, abs=1e-5), step.step
        assert got[step.step]["reward_margin"] == pytest.approx(
            step.preference["reward_margin"], rel=1e-3, abs=1e-5
        ), step.step


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo"])
def test_each_method_trains_a_4bit_model_on_the_cpu(method, tiny_model_dir, pairs, labels, tmp_path):
    recorder = Recorder()
    data = labels if method == "kto" else pairs
    config = make_config(tiny_model_dir, data, tmp_path / "runs", method, max_steps=3)
    result = train(config.with_overrides({"model.quantization": "nf4"}), recorder)
    assert result.status == "completed" and result.step == 3
    steps = recorder.steps()
    assert steps[-1].loss < steps[0].loss
    started = next(e for e in recorder.events if isinstance(e, ev.RunStarted))
    assert started.trainable_params < started.total_params * 0.2


def _trainer(model, tokenizer, config: RunConfig, tmp_path: Path, data):
    """The engine's own trainer class and arguments, around a model the test controls."""
    from lora_studio.core.data import collate_preferences
    from lora_studio.core.train.trainer import trainer_class, training_arguments

    folder = SimpleNamespace(checkpoints_dir=tmp_path / "checkpoints")
    run = SimpleNamespace(
        config=config, folder=folder, data=data, device="cpu", dtype=torch.float32, world=None
    )
    return trainer_class(config.training.method)(
        run=run,
        model=model,
        args=training_arguments(run),
        train_dataset=data.train,
        eval_dataset=None,
        data_collator=collate_preferences(config.training.method, tokenizer.pad_token_id, 64),
        processing_class=tokenizer,
    )


def _log_probs(model, batch) -> torch.Tensor:
    """Summed log-probabilities of each row's trained tokens, computed without TRL."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_the_dpo_reference_is_the_base_with_the_adapter_off(quant, tiny_model_dir, pairs, tmp_path):
    """No "ref" copy is kept for a new adapter, and the reference log-probabilities equal those of
    the base model loaded on its own, while the adapter (made non-zero) changes the policy's."""
    from transformers import AutoModelForCausalLM

    from lora_studio.core.data import prepare_preferences
    from lora_studio.core.models import load_model, load_tokenizer
    from lora_studio.core.train.engine import wrap_with_lora

    config = make_config(tiny_model_dir, pairs, tmp_path, "dpo").with_overrides({"model.quantization": quant})
    tokenizer = load_tokenizer(tiny_model_dir)
    data = prepare_preferences(config.data, tokenizer, "dpo")
    model, _ = load_model(str(tiny_model_dir), quant, "fp32", "cpu")
    model = wrap_with_lora(model, config)
    trainer = _trainer(model, tokenizer, config, tmp_path, data)
    assert list(model.peft_config) == ["default"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    batch = trainer.data_collator([data.train[i] for i in range(4)])
    chosen, rejected = trainer.compute_ref_log_probs(model, batch)
    reference = torch.cat([chosen, rejected])

    base, _ = load_model(str(tiny_model_dir), quant, "fp32", "cpu")
    if quant == "none":
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert torch.allclose(reference, _log_probs(base, batch), atol=1e-3)
    assert not torch.allclose(reference, _log_probs(model, batch), atol=1e-1)  # the adapter does change it


def test_dpo_from_an_sft_run_compares_with_base_plus_that_adapter(tiny_model_dir, pairs, tmp_path):
    """``--init-adapter RUN``: training starts from the SFT run's adapter, the reference is base +
    that adapter (frozen), and both live in one model: the policy's first rewards are zero."""
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A."}]}
            )
            + "\n"
            for i in range(8)
        )
    )
    sft = train(make_config(tiny_model_dir, chat, tmp_path / "runs", "sft", max_steps=3))
    recorder = Recorder()
    config = make_config(tiny_model_dir, pairs, tmp_path / "runs", "dpo", max_steps=3).with_overrides(
        {"preference.init_adapter": str(sft.run_dir)}
    )
    result = train(config, recorder)
    steps = recorder.steps()
    assert steps[0].preference["reward_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1].preference["reward_margin"] > 0
    from safetensors.torch import load_file

    start = load_file(sft.adapter_path / "adapter_model.safetensors")
    end = load_file(result.adapter_path / "adapter_model.safetensors")
    assert start.keys() == end.keys()
    assert any(not torch.equal(start[k], end[k]) for k in start)


def test_an_init_adapter_that_is_not_one_is_refused_before_the_model_loads(tiny_model_dir, pairs, tmp_path):
    config = make_config(tiny_model_dir, pairs, tmp_path / "runs", "dpo").with_overrides(
        {"preference.init_adapter": str(tmp_path)}
    )
    with pytest.raises(ConfigError) as info:
        train(config)
    assert "preference.init_adapter" in info.value.problems
    assert "adapter_config.json" in info.value.problems["preference.init_adapter"]
    assert not (tmp_path / "runs").exists()


def test_dpo_on_labelled_answers_says_to_choose_kto(tiny_model_dir, labels, tmp_path):
    with pytest.raises(DatasetError) as info:
        train(make_config(tiny_model_dir, labels, tmp_path / "runs", "dpo"))
    assert "labelled good or bad" in info.value.message and "KTO" in info.value.hint


def test_kto_reads_pairs_as_two_labelled_answers(tiny_model_dir, pairs):
    from lora_studio.core.config import DataSection
    from lora_studio.core.data import prepare_preferences
    from lora_studio.core.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    data = prepare_preferences(DataSection(path=str(pairs), max_seq_len=64), tokenizer, "kto")
    # 14 pairs train (the default holds 2 of the 16 out), each two labelled answers
    assert data.stats.examples == 28 and data.stats.desirable == 14 and data.stats.undesirable == 14
    assert data.stats.eval_examples == 4
    assert sorted(set(data.train["label"])) == [False, True]


def test_a_prompt_longer_than_max_seq_len_is_named(tiny_model_dir, tmp_path):
    from lora_studio.core.config import DataSection
    from lora_studio.core.data import prepare_preferences
    from lora_studio.core.models import load_tokenizer

    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "Hi?", "chosen": "Yes.", "rejected": "No."}] * 3
    rows.append({"prompt": "word " * 200, "chosen": "Yes.", "rejected": "No."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = load_tokenizer(tiny_model_dir)
    with pytest.raises(DatasetError) as info:
        prepare_preferences(DataSection(path=str(path), max_seq_len=64), tokenizer, "dpo")
    assert info.value.line == 4 and "max_seq_len = 64" in info.value.message
    named = int(re.search(r"the prompt is ([\d,]+) tokens", info.value.message).group(1).replace(",", ""))
    assert named > 200  # the whole prompt, not the 64 tokens it was cut to
    assert f"above {named}" in info.value.hint
    kept = prepare_preferences(
        DataSection(path=str(path), max_seq_len=64, skip_invalid=True), tokenizer, "dpo"
    )
    assert kept.stats.examples == 3 and len(kept.stats.skipped) == 1


def test_only_the_answer_is_trained_in_a_multi_turn_prompt(tiny_model_dir, tmp_path):
    """An earlier assistant turn of the prompt is context: only the chosen/rejected answer is learnt."""
    from lora_studio.core.config import DataSection
    from lora_studio.core.data import IGNORE, prepare_preferences
    from lora_studio.core.models import load_tokenizer

    path = tmp_path / "multi.jsonl"
    prompt = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "EARLIER TURN"},
        {"role": "user", "content": "And now?"},
    ]
    row = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "Good."}],
        "rejected": [{"role": "assistant", "content": "Bad."}],
    }
    path.write_text(json.dumps(row) + "\n")
    tokenizer = load_tokenizer(tiny_model_dir)
    data = prepare_preferences(DataSection(path=str(path), max_seq_len=128), tokenizer, "dpo")
    row = data.train[0]
    for side, answer in (("chosen", "Good."), ("rejected", "Bad.")):
        trained = [
            t for t, label in zip(row[f"{side}_ids"], row[f"{side}_labels"], strict=True) if label != IGNORE
        ]
        text = tokenizer.decode(trained)
        assert answer in text and "EARLIER" not in text


def test_packing_and_train_on_all_are_refused_for_preference_methods():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"training": {"method": "dpo"}, "data": {"packing": True, "train_on": "all"}})
    assert set(info.value.problems) == {"data.packing", "data.train_on"}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"training": {"method": "kto", "batch_size": 1}})
    assert "KTO needs at least 2" in info.value.problems["training.batch_size"]


def test_the_cli_takes_the_method_the_init_adapter_and_the_dpo_demo(tmp_path):
    from lora_studio.cli import main

    out = tmp_path / "demo.toml"
    assert main(["train", "--demo", "dpo", "--beta", "0.2", "--save-config", str(out)]) == 0
    config = RunConfig.load(out)
    assert config.training.method == "dpo" and config.data.path == "demo-dpo"
    assert config.preference.beta == 0.2 and config.training.max_steps == 20
    assert config.preference.sft_weight == 1.0
    assert main(["train", "--method", "kto", "--init-adapter", "/x", "--save-config", str(out)]) == 0
    config = RunConfig.load(out)
    assert config.training.method == "kto" and config.preference.init_adapter == "/x"
    assert main(["train", "--demo", "--save-config", str(out)]) == 0
    assert RunConfig.load(out).data.path == "demo"


def test_the_model_card_names_the_method_and_its_reference():
    from lora_studio.core.export.files import method_summary

    assert "SFT" in method_summary(RunConfig())
    dpo = RunConfig.from_dict({"training": {"method": "dpo"}, "preference": {"beta": 0.2, "sft_weight": 1.0}})
    assert method_summary(dpo) == (
        "DPO on chosen/rejected pairs (sigmoid loss, β = 0.2, plus SFT on the chosen answers × 1; "
        "reference: the base model (adapter off))"
    )
    kto = RunConfig.from_dict({"training": {"method": "kto"}, "preference": {"init_adapter": "runs/sft"}})
    assert "reference: base model + that adapter" in method_summary(kto)
    assert "starting from the adapter `runs/sft`" in method_summary(kto)
    assert "no reference model" in method_summary(RunConfig.from_dict({"training": {"method": "simpo"}}))


def test_sft_can_continue_an_earlier_adapter_too(tiny_model_dir, tmp_path):
    """``init_adapter`` is not only for preference runs: an SFT run continues that adapter."""
    chat = tmp_path / "chat.jsonl"
    row = {"messages": [{"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Lumen."}]}
    chat.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    first, second = Recorder(), Recorder()
    earlier = train(make_config(tiny_model_dir, chat, tmp_path / "runs", "sft", max_steps=4), first)
    config = make_config(tiny_model_dir, chat, tmp_path / "runs", "sft", max_steps=1)
    train(config.with_overrides({"preference.init_adapter": str(earlier.run_dir)}), second)
    assert second.steps()[0].loss < first.steps()[0].loss - 0.1  # it starts where the earlier run ended
    assert second.steps()[0].loss == pytest.approx(first.steps()[-1].loss, rel=0.2)
