"""Train: one LoRA/QLoRA run from a config to an adapter, reporting as it goes.

``engine`` is the recipe the GUI, the CLI and the tests all run (``train``, ``resume``): data,
run folder, model, LoRA, samples, the loop, the finish — everything the outside learns arrives as
``events``. ``trainer`` is the loop on ``transformers.Trainer`` (imported only when a run starts:
it pulls in torch); ``memory_saving`` holds the chunked loss, lean k-bit preparation and offloaded
checkpoints; ``monitor`` samples GPU/CPU memory; ``clock`` is the run's one clock; ``shared`` lends a paused run's model to chat;
``distributed`` and ``launch`` spread a run over several GPUs. Depends on ``data`` and the base.
"""

from lora_studio.core.train.clock import RunClock, format_duration
from lora_studio.core.train.distributed import World
from lora_studio.core.train.engine import (
    RunResult,
    TrainingRun,
    linear_module_names,
    resume,
    train,
    wrap_with_lora,
)
from lora_studio.core.train.launch import LaunchBundle, accelerate_command, write_launch_bundle
from lora_studio.core.train.memory_saving import loss_chunk_tokens
from lora_studio.core.train.monitor import DeviceSummary, MemorySampler, device_summary
from lora_studio.core.train.shared import SharedModel

__all__ = [
    "DeviceSummary",
    "LaunchBundle",
    "MemorySampler",
    "RunClock",
    "RunResult",
    "SharedModel",
    "TrainingRun",
    "World",
    "accelerate_command",
    "device_summary",
    "format_duration",
    "linear_module_names",
    "loss_chunk_tokens",
    "resume",
    "train",
    "wrap_with_lora",
    "write_launch_bundle",
]
