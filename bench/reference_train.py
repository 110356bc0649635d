"""The plain reference: transformers.Trainer + peft and nothing else (no callbacks, no run folder).

``bench/throughput.py`` runs this and LoRA Studio's engine on the same tokenized data, LoRA
config, batch and steps, and compares non-padding tokens per second.
"""

from __future__ import annotations

import time
from typing import Any


def train_reference(
    model_dir: str,
    dataset: Any,
    collator: Any,
    *,
    quantization: str,
    steps: int,
    batch_size: int,
    lora_r: int,
    seed: int = 42,
) -> dict[str, float]:
    """Train ``steps`` steps: the seconds from the first step's start to the last's end, and the
    non-padding tokens of those steps' batches."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    quant = None
    if quantization == "nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quant, device_map={"": "cpu"}
    )
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_seed(seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora_r,
            lora_alpha=2 * lora_r,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    model.config.use_cache = False

    counted = {"batches": 0, "tokens": 0}

    def strip_length(features):
        if counted["batches"] < steps:  # one batch per step (no accumulation); not a prefetched extra
            counted["batches"] += 1
            counted["tokens"] += sum(len(f["input_ids"]) for f in features)
        return collator([{k: v for k, v in f.items() if k != "length"} for f in features])

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    args = TrainingArguments(
        output_dir=str(model_dir) + "-ref-out",
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=5e-4,
        logging_steps=steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=strip_length, callbacks=[Clock()]
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # printing only; the engine drops it too
    trainer.train()
    # The stock length-grouped sampler orders batches from the global generator, the engine's from
    # (seed, epoch) so that resumed runs see the same batches: same data, other batches, so each
    # run's own non-padding tokens are counted.
    return {
        "seconds": clock["end"] - clock["start"],
        "cpu_seconds": clock["cpu_end"] - clock["cpu_start"],  # every thread of the process
        "tokens": counted["tokens"],
    }
