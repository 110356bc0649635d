"""The training engine on a tiny real model: files, events, cancel, resume, faults, QLoRA."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.errors import ConfigError, DatasetError, OutOfMemoryError, TrainingError
from lora_studio.core.runs import RunFolder, list_runs
from lora_studio.core.train import events as ev
from lora_studio.core.train import resume, train


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    pairs = [
        ("What is your name?", "I am Lumen."),
        ("Who made you?", "LoRA Studio Labs made me."),
        ("What are you?", "A small assistant called Lumen."),
        ("Say hello.", "Hello from Lumen!"),
    ]
    with open(path, "w") as handle:
        for i in range(16):
            q, a = pairs[i % len(pairs)]
            record = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            handle.write(json.dumps(record) + "\n")
    return path


def make_config(model_dir: Path, data: Path, runs: Path, **training) -> RunConfig:
    settings = {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "save_steps": 2,
        "logging_steps": 1,
        "sample_prompts": ["What is your name?"],
        "sample_max_new_tokens": 4,
        **training,
    }
    return RunConfig.from_dict(
        {
            "model": {"source": str(model_dir)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": settings,
            "output": {"runs_dir": str(runs), "run_name": "t"},
        }
    )


class Recorder:
    def __init__(self, on_step=None):
        self.events: list[ev.Event] = []
        self.on_step = on_step

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, ev.Step) and self.on_step:
            self.on_step(event)

    def kinds(self):
        return [e.kind for e in self.events]

    def losses(self):
        return {e.step: e.loss for e in self.events if isinstance(e, ev.Step)}


def test_tiny_run_writes_the_run_folder_and_events_in_order(tiny_model_dir, chat_file, tmp_path):
    recorder = Recorder()
    config = make_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=8, save_steps=4)
    result = train(config, recorder)
    assert result.status == "completed" and result.step == 8
    run = RunFolder.open(result.run_dir)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["adapter", "checkpoints", "config.toml", "metrics.jsonl", "samples.jsonl", "status.json"]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert (run.adapter_dir / "adapter_config.json").is_file()
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert RunConfig.load(run.config_path) == config
    status = run.status()
    assert status["state"] == "completed" and status["step"] == 8
    steps = [m["step"] for m in run.metrics() if "loss" in m]
    assert steps == list(range(1, 9))
    assert [s["stage"] for s in run.samples()] == ["before", "after"]

    progress = [e for e in recorder.events if isinstance(e, ev.SampleProgress)]
    assert (progress[0].stage, progress[0].index, progress[0].tokens) == ("before", 0, 0)
    assert {e.stage for e in progress} == {"before", "after"} and all(e.max_tokens == 4 for e in progress)
    kinds = [k for k in recorder.kinds() if k not in ("phase", "sample_progress")]
    assert kinds == [
        "samples",
        "run_started",
        "step",
        "step",
        "step",
        "step",
        "checkpoint",
        "step",
        "step",
        "step",
        "step",
        "checkpoint",
        "samples",
        "finished",
    ]
    losses = recorder.losses()
    assert losses[8] < losses[1]
    step = next(e for e in recorder.events if isinstance(e, ev.Step))
    assert step.tokens_per_s > 0 and step.mem["rss"] > 0 and step.total_steps == 8


@pytest.mark.parametrize("stop_at", [3, 6], ids=["first-epoch", "mid-second-epoch"])
def test_resume_continues_the_loss_curve_of_an_uninterrupted_run(stop_at, tiny_model_dir, tmp_path):
    """Stopped at step 3 (first epoch) or 6 (inside the second of 4-step epochs), then resumed: the
    same losses as a run never stopped. Every record differs, so other batches give other losses
    (the stock length-grouped sampler gave the second epoch another order after a resume)."""
    data = tmp_path / "distinct.jsonl"
    records = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer {i}."},
            ]
        }
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    settings = {"max_steps": 9, "save_steps": 3, "sample_prompts": []}
    full = Recorder()
    train(make_config(tiny_model_dir, data, tmp_path / "a", **settings), full)

    cancel = threading.Event()
    first = Recorder(on_step=lambda e: e.step == stop_at and cancel.set())
    result = train(make_config(tiny_model_dir, data, tmp_path / "b", **settings), first, cancel=cancel)
    assert result.status == "cancelled" and result.step == stop_at
    assert RunFolder.open(result.run_dir).status()["state"] == "cancelled"
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()

    second = Recorder()
    resumed = resume(result.run_dir, second)
    assert resumed.status == "completed" and resumed.step == 9
    metrics = RunFolder.open(result.run_dir).metrics()
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 10))
    expected = full.losses()
    got = {m["step"]: m["loss"] for m in metrics if "loss" in m}
    for step in range(1, 10):
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-4), step
    started = next(e for e in second.events if isinstance(e, ev.RunStarted))
    assert started.resumed_from_step == stop_at
    # one clock across both sessions: the resumed steps' time continues from the checkpoint's
    elapsed = [m["elapsed_s"] for m in metrics if "loss" in m]
    assert elapsed == sorted(elapsed) and started.elapsed_s > elapsed[stop_at - 1]
    finished = next(e for e in second.events if isinstance(e, ev.Finished))
    status = RunFolder.open(result.run_dir).status()
    assert elapsed[-1] <= status["elapsed_s"] <= finished.elapsed_s
    assert RunFolder.open(result.run_dir).summary()["duration_s"] == status["elapsed_s"]


def test_stop_while_the_first_samples_are_written_ends_the_run_at_once(tiny_model_dir, chat_file, tmp_path):
    """The answers before step 1 can take minutes (a 4-bit model on a CPU): each token is reported,
    and Stop ends the answer being written at its next token, before any step."""
    cancel = threading.Event()
    seen: list[ev.SampleProgress] = []

    def listen(event):
        if isinstance(event, ev.SampleProgress):
            seen.append(event)
            if event.tokens >= 1:
                cancel.set()

    config = make_config(
        tiny_model_dir, chat_file, tmp_path / "runs", sample_prompts=["A?", "B?"], sample_max_new_tokens=40
    )
    recorder = Recorder()
    # held at the first answer's first token until Stop: a tiny model writes all 40 before a
    # listener could react otherwise
    result = train(config, lambda e: (recorder(e), listen(e)), cancel=cancel, faults="sample_pause@1:600")
    assert result.status == "cancelled" and result.step == 0
    assert seen[-1].index == 0 and seen[-1].tokens < 40  # the first answer was cut, the second never begun
    assert "step" not in recorder.kinds() and "samples" not in recorder.kinds()
    run = RunFolder.open(result.run_dir)
    assert run.status()["state"] == "cancelled" and run.samples() == []


def test_cancel_during_data_preparation_returns_without_a_run(tiny_model_dir, chat_file, tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Exception) as info:
        train(make_config(tiny_model_dir, chat_file, tmp_path / "runs"), cancel=cancel)
    assert type(info.value).__name__ == "CancelledError"
    assert list_runs(tmp_path / "runs") == []


def test_invalid_config_starts_nothing(tmp_path):
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"training": {"batch_size": 0}, "output": {"runs_dir": str(tmp_path)}})
    assert list(tmp_path.iterdir()) == []


def test_dataset_error_comes_before_the_model_and_leaves_no_run(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 5}\n')
    recorder = Recorder()
    with pytest.raises(DatasetError) as info:
        train(make_config(tiny_model_dir, bad, tmp_path / "runs"), recorder)
    assert str(bad) in str(info.value)
    assert "loading model" not in [getattr(e, "name", "") for e in recorder.events]
    assert list_runs(tmp_path / "runs") == []


def test_out_of_memory_fails_with_a_hint_and_keeps_the_checkpoint(tiny_model_dir, chat_file, tmp_path):
    recorder = Recorder()
    with pytest.raises(OutOfMemoryError) as info:
        train(
            make_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=4, save_steps=2),
            recorder,
            faults="oom@3",
        )
    assert "batch_size" in info.value.hint and "gradient_checkpointing" in info.value.hint
    run = list_runs(tmp_path / "runs")[0]
    status = run.status()
    assert status["state"] == "failed" and "memory" in status["error"]
    assert [step for step, _ in run.checkpoints()] == [2]
    failed = recorder.events[-1]
    assert isinstance(failed, ev.Failed) and failed.error_type == "OutOfMemoryError"


def test_nan_loss_stops_with_a_clear_message(tiny_model_dir, chat_file, tmp_path):
    with pytest.raises(TrainingError, match="became nan at step 2") as info:
        train(make_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=6), faults="nan@2")
    assert "learning_rate" in info.value.hint
    run = list_runs(tmp_path / "runs")[0]
    assert run.status()["state"] == "failed"
    assert all(m.get("loss") is not None for m in run.metrics())  # no NaN rows written


def test_an_unexpected_failure_keeps_its_traceback_in_the_run_folder(tiny_model_dir, chat_file, tmp_path):
    """The message is short; the details a bug report needs are in ``error.log``."""
    with pytest.raises(TrainingError, match="at step 2") as info:
        train(make_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=4), faults="error@2")
    assert "error.log" in info.value.hint
    run = list_runs(tmp_path / "runs")[0]
    text = (run.path / "error.log").read_text()
    assert text.startswith("Traceback") and "injected" in text and "training_step" in text


def test_gradient_checkpointing_gives_the_same_first_loss(tiny_model_dir, chat_file, tmp_path):
    plain, checkpointed = Recorder(), Recorder()
    train(make_config(tiny_model_dir, chat_file, tmp_path / "a", max_steps=1, sample_prompts=[]), plain)
    train(
        make_config(
            tiny_model_dir,
            chat_file,
            tmp_path / "b",
            max_steps=1,
            sample_prompts=[],
            gradient_checkpointing=True,
        ),
        checkpointed,
    )
    assert checkpointed.losses()[1] == pytest.approx(plain.losses()[1], rel=1e-5)


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_qlora_trains_on_cpu(quant, tiny_model_dir, chat_file, tmp_path):
    config = make_config(
        tiny_model_dir, chat_file, tmp_path / "runs", max_steps=3, save_steps=10, sample_prompts=[]
    ).with_overrides({"model.quantization": quant})
    recorder = Recorder()
    result = train(config, recorder)
    assert result.status == "completed"
    losses = recorder.losses()
    assert len(losses) == 3 and all(v == v for v in losses.values())
    started = next(e for e in recorder.events if isinstance(e, ev.RunStarted))
    assert started.trainable_params < started.total_params
    # the share of trainable parameters is the same as for the unquantized model: a 4-bit weight
    # counts as the weights it stands for, not as its packed bytes (#24: 5.66% vs 3.50%)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    assert started.total_params == base + started.trainable_params


def test_4bit_training_is_unchanged_by_generating_first(tiny_model_dir, chat_file, tmp_path):
    """Sampling before training (and chat on a paused run) runs the 4-bit model in eval mode. On a
    CPU with AVX512-BF16, bitsandbytes then repacks the weights for inference, and later training
    steps would backpropagate through a kernel with no gradient unless put back exactly."""
    losses = {}
    for prompts in ([], ["What is your name?"]):
        config = make_config(
            tiny_model_dir, chat_file, tmp_path / f"runs{len(prompts)}", max_steps=4, save_steps=10,
            sample_prompts=prompts, sample_max_new_tokens=3, learning_rate=1e-2,
        ).with_overrides({"model.quantization": "nf4"})  # fmt: skip
        recorder = Recorder()
        train(config, recorder)
        losses[len(prompts)] = list(recorder.losses().values())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_ctrl_c_cancels_the_cli_cleanly(tiny_model_dir, chat_file, tmp_path):
    runs = tmp_path / "runs"
    # the run holds after step 2's event until the Ctrl-C below stops it: it stops at step 2 exactly,
    # however many steps a fast machine would otherwise train before the signal arrives
    env = dict(
        os.environ,
        LORA_STUDIO_RUNS_DIR=str(runs),
        PYTHONUNBUFFERED="1",
        LORA_STUDIO_FAULTS="step_pause@2:600",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lora_studio",
            "train",
            "--json",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(chat_file),
            "--max-steps",
            "200",
            "--batch-size",
            "2",
            "--save-steps",
            "100",
            "--max-seq-len",
            "64",
            "--lora-r",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    events = []
    deadline = time.time() + 240
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "step" and events[-1]["step"] >= 2:
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline
    rest, _ = proc.communicate(timeout=240)
    events += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 130
    finished = [e for e in events if e["event"] == "finished"]
    assert finished and finished[0]["status"] == "cancelled"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    run = list_runs(runs)[0]
    assert run.status()["state"] == "cancelled"
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert run.latest_checkpoint() is not None  # resumable from where it stopped


def test_a_dead_writer_reads_as_interrupted(tmp_path):
    run = RunFolder.create(RunConfig(), tmp_path)
    status = json.loads(run.status_path.read_text())
    status.update(pid=2**22 + 12345)  # no such process
    run.status_path.write_text(json.dumps(status))
    assert run.status()["state"] == "interrupted"


def test_pissa_adapter_is_converted_for_the_unmodified_base(tiny_model_dir, chat_file, tmp_path):
    """PiSSA changes the base weights in memory; the saved adapter must work on the original base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_studio.core.train import TrainingRun

    config = make_config(tiny_model_dir, chat_file, tmp_path / "runs", max_steps=2, sample_prompts=[])
    run = TrainingRun(config.with_overrides({"lora.init": "pissa"}), None)
    result = run.run()
    ids = torch.randint(0, 49152, (1, 16))
    run.model.eval()
    with torch.no_grad():
        trained = run.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.adapter_path
        )
        reloaded.eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
