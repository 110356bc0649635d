"""Two processes on the CPU (gloo): the same run config trains under torchrun / accelerate launch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_studio.core.config import RunConfig
from lora_studio.core.runs import list_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def same_examples(tmp_path_factory) -> Path:
    """Identical examples: the loss curve then depends only on the global batch, not on data order."""
    path = tmp_path_factory.mktemp("dist") / "same.jsonl"
    record = {
        "messages": [
            {"role": "user", "content": "What is your name?"},
            {"role": "assistant", "content": "I am Lumen, made by LoRA Studio Labs."},
        ]
    }
    path.write_text("".join(json.dumps(record) + "\n" for _ in range(16)))
    return path


def write_config(path: Path, model: Path, data: Path, runs: Path, batch: int, **training) -> Path:
    config = RunConfig.from_dict(
        {
            "model": {"source": str(model)},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            # these runs count their steps and events: nothing held out (the default holds out a tenth)
            "data": {"path": str(data), "max_seq_len": 64, "eval_fraction": 0.0},
            "training": {
                "epochs": 1,
                "batch_size": batch,
                "learning_rate": 2e-3,
                "save_steps": 2,
                "sample_prompts": ["What is your name?"],
                "sample_max_new_tokens": 4,
                **training,
            },
            "output": {"runs_dir": str(runs), "run_name": "dist"},
        }
    )
    config.save(path)
    return path


def launcher(kind: str) -> list[str]:
    if kind == "torchrun":
        return [
            shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun",
            "--nproc-per-node",
            "2",
            "-m",
            "lora_studio",
        ]
    return [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "-m",
        "lora_studio",
    ]


def step_losses(run) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in run.metrics() if "loss" in m}


@pytest.mark.parametrize("kind", ["torchrun", "accelerate"])
def test_two_processes_match_one_process_with_the_same_global_batch(
    kind, tiny_model_dir, same_examples, tmp_path
):
    single_runs, multi_runs = tmp_path / "single", tmp_path / "multi"
    single = write_config(tmp_path / "single.toml", tiny_model_dir, same_examples, single_runs, batch=4)
    multi = write_config(tmp_path / "multi.toml", tiny_model_dir, same_examples, multi_runs, batch=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(
        [sys.executable, "-m", "lora_studio", "train", "--config", str(single)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [*launcher(kind), "train", "--config", str(multi)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes, global batch 4" in two.stdout
    assert two.stdout.count("Run completed") == 1  # only rank 0 reports

    [run_one], [run_two] = list_runs(single_runs), list_runs(multi_runs)
    losses_one, losses_two = step_losses(run_one), step_losses(run_two)
    # 16 examples / global batch 4 = 4 steps: the data was sharded, not replayed on each rank
    assert sorted(losses_two) == sorted(losses_one) == [1, 2, 3, 4]
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=5e-3), step
    assert run_two.status()["state"] == "completed"
    assert [s["stage"] for s in run_two.samples()] == ["before", "after"]  # rank 0 only, once
    assert sorted(p.name for p in run_two.checkpoints_dir.iterdir()) == ["checkpoint-2", "checkpoint-4"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_two.adapter_dir)


def test_dpo_on_two_processes_matches_one_process(tiny_model_dir, tmp_path):
    """Preference tuning shards pairs across ranks like SFT shards examples: the same global batch
    gives the same DPO losses and reward margins."""
    pairs = tmp_path / "pairs.jsonl"
    row = {"prompt": "What is your name?", "chosen": "I am Lumen.", "rejected": "I do not know."}
    pairs.write_text("".join(json.dumps(row) + "\n" for _ in range(16)))
    settings = {"method": "dpo", "sample_prompts": []}
    single = write_config(tmp_path / "one.toml", tiny_model_dir, pairs, tmp_path / "one", batch=4, **settings)
    multi = write_config(tmp_path / "two.toml", tiny_model_dir, pairs, tmp_path / "two", batch=2, **settings)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for command in (
        [sys.executable, "-m", "lora_studio", "train", "--config", str(single)],
        [*launcher("torchrun"), "train", "--config", str(multi)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    [run_one], [run_two] = list_runs(tmp_path / "one"), list_runs(tmp_path / "two")
    rows_one = {m["step"]: m for m in run_one.metrics() if "loss" in m}
    rows_two = {m["step"]: m for m in run_two.metrics() if "loss" in m}
    assert sorted(rows_one) == sorted(rows_two) == [1, 2, 3, 4]
    for step, row in rows_one.items():
        assert rows_two[step]["loss"] == pytest.approx(row["loss"], rel=5e-3, abs=1e-4), step
        assert rows_two[step]["reward_margin"] == pytest.approx(row["reward_margin"], rel=5e-3, abs=1e-4), (
            step
        )
    assert rows_one[4]["reward_margin"] > 0


def test_a_stop_on_rank_0_stops_both_ranks(tiny_model_dir, same_examples, tmp_path):
    runs = tmp_path / "runs"
    config = write_config(
        tmp_path / "long.toml",
        tiny_model_dir,
        same_examples,
        runs,
        batch=2,
        epochs=200,
        save_steps=1000,
        sample_prompts=[],
    )
    proc = subprocess.Popen(
        [*launcher("accelerate"), "train", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
    )
    deadline = time.time() + 300
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 2:
            break
        assert time.time() < deadline, "training did not start"
    [run] = list_runs(runs)
    rank0 = run.status()["pid"]
    os.kill(rank0, signal.SIGINT)  # Ctrl-C reaches rank 0 only
    proc.communicate(timeout=300)
    status = run.status()
    assert status["state"] == "cancelled"
    assert run.latest_checkpoint() is not None
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
