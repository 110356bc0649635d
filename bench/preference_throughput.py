"""Preference-step speed: LoRA Studio's DPO vs a plain TRL ``DPOTrainer`` + peft script.

The plain side is what the TRL documentation shows: the model from ``from_pretrained``, a
``peft.LoraConfig`` passed to ``DPOTrainer``, a ``DPOConfig``, and raw prompt/chosen/rejected rows
that TRL tokenizes itself. Ours is the engine with every event, run-folder write and memory sample
on (logging every step). Same model, LoRA (r16, all linear layers), batch, steps and data (one
pair repeated, so every batch holds the same tokens on both sides), fp32 on the CPU, no gradient
checkpointing, no evaluation or checkpoints. Both count non-padding tokens (chosen + rejected
sequences). The plain script keeps TRL's defaults except the two that set the speed, which follow
ours: no bf16 autocast and no gradient checkpointing (TRL turns both on; with them it ran ~1.3x
faster on this CPU, whose bf16 matmuls beat fp32 — nothing to do with the engine). Target: ours >=
0.97x the plain script. Repetitions are interleaved, alternating which side runs first; the ratio of each repetition's two neighbouring runs cancels a shared machine's drift.

    python bench/preference_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import WORK, default_model_dir, median, print_table, tiny_model_dir, write_results

PAIR = {
    "prompt": [{"role": "user", "content": "Give me one tip for writing clear emails, please."}],
    "chosen": [{"role": "assistant", "content": "Put the request in the first sentence and keep it short."}],
    "rejected": [
        {
            "role": "assistant",
            "content": "Emails are a fascinating form of communication with a long history. There are "
            "many things one could say about them, and clarity is only one of them.",
        }
    ],
}


def pair_data(n: int = 64):
    path = WORK / "pairs.jsonl"
    path.write_text("".join(json.dumps(PAIR) + "\n" for _ in range(n)))
    return path


def engine_run(model_dir, data, *, steps: int, batch_size: int) -> dict[str, float]:
    from lora_studio.core.config import RunConfig
    from lora_studio.core.train import events as ev
    from lora_studio.core.train import train

    config = RunConfig.from_dict(
        {
            "model": {"source": str(model_dir), "compute_dtype": "fp32"},
            "lora": {"r": 16, "alpha": 32},
            "data": {"path": str(data), "max_seq_len": 256},
            "training": {
                "method": "dpo",
                "max_steps": steps,
                "batch_size": batch_size,
                "save_steps": 10_000,
                "logging_steps": 1,
                "sample_prompts": [],
            },
            "output": {"runs_dir": str(WORK / "engine-runs")},
        }
    )
    marks: dict[str, float] = {}

    def listen(event):
        if isinstance(event, ev.RunStarted):
            marks["start"] = time.perf_counter()
        elif isinstance(event, ev.Step) and event.step == steps:
            marks["end"], marks["tokens"] = time.perf_counter(), event.tokens_seen

    train(config, listen)
    return {"seconds": marks["end"] - marks["start"], "tokens": marks["tokens"]}


def plain_run(model_dir, data, *, steps: int, batch_size: int) -> dict[str, float]:
    """The TRL quick-start, on the same rows: nothing of LoRA Studio's is imported."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = load_dataset("json", data_files=str(data), split="train")
    marks: dict[str, float] = {}
    batches: list[int] = []  # tokens of each batch made (the data loader makes one ahead of the last step)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == steps:
                marks["end"] = time.perf_counter()

    args = DPOConfig(
        output_dir=str(WORK / "plain-dpo"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        max_length=256,
        dataset_num_proc=None,
        # TRL's own defaults differ from ours in two settings that decide the speed: bf16 autocast
        # and gradient checkpointing (a third forward). Both are set as our run has them, so the
        # ratio measures the engine, not the settings.
        bf16=False,
        gradient_checkpointing=False,
        lr_scheduler_type="linear",
        seed=42,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"),
        callbacks=[Clock()],
    )
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        batches.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    trainer.train()
    return {"seconds": marks["end"] - marks["start"], "tokens": sum(batches[:steps])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    args = parser.parse_args()
    from lora_studio.core.models import quiet_library_defaults

    quiet_library_defaults()
    data = pair_data()
    cases = [
        (
            "tiny (4 layers, hidden 256)",
            tiny_model_dir(layers=4, hidden=256, intermediate=688, heads=4, kv_heads=2),
            10 if args.quick else 24,
            2 if args.quick else 4,
        ),
        ("SmolLM2-135M (default)", default_model_dir(), 2 if args.quick else 6, 1 if args.quick else 3),
    ]
    rows = []
    for label, model_dir, steps, reps in cases:
        ours, plain = [], []
        for rep in range(reps):
            for side in ("engine", "plain") if rep % 2 == 0 else ("plain", "engine"):
                run = engine_run if side == "engine" else plain_run
                result = run(model_dir, data, steps=steps, batch_size=4)
                (ours if side == "engine" else plain).append(result["tokens"] / result["seconds"])
        pairs = [o / p for o, p in zip(ours, plain, strict=True)]
        rows.append(
            {
                "model": label,
                "steps": steps,
                "reps": reps,
                "plain TRL tok/s": median(plain),
                "LoRA Studio tok/s": median(ours),
                "ratio": median(pairs),
                "pair ratios": f"{min(pairs):.2f}-{max(pairs):.2f}",
            }
        )
        print_table("DPO step: LoRA Studio vs plain TRL DPOTrainer + peft", rows[-1:])
    print_table(
        "DPO step: LoRA Studio vs plain TRL DPOTrainer + peft (non-padding tokens/s, median of "
        "interleaved repetitions; ratio = median of each repetition's ours/plain)",
        rows,
    )
    print("target: ratio >= 0.97; the range of the pair ratios shows the run-to-run noise")
    write_results("preference_throughput", {"rows": rows, "target": "ours/plain >= 0.97"})


if __name__ == "__main__":
    main()
