"""Export: a fine-tune as a PEFT adapter, a merged model, GGUF (model and adapter) or an Ollama Modelfile.

``plan`` checks the source, the targets, disk space and memory before anything is written
(``plan_export``); ``job`` writes each format into a staging folder, renames it into place when
complete and verifies it by loading it back (``export``, ``run_export``). ``files`` writes the
adapter, the merged shards and the model card; ``gguf`` and ``gguf_vocab`` write GGUF files
llama.cpp reads; ``modelfile`` writes Ollama's; ``verify`` compares what was written with the
source; ``types`` holds the plan, progress and report. Depends on ``chat``, ``data`` and the base.
"""

from lora_studio.core.export.job import ExportJob, export, run_export
from lora_studio.core.export.plan import parse_formats, parse_quants, plan_export, resolve_source, size_text
from lora_studio.core.export.types import (
    DEFAULT_SHARD_BYTES,
    DTYPES,
    FORMATS,
    QUANTS,
    STAGING_PREFIX,
    ExportError,
    ExportPlan,
    ExportProgress,
    ExportReport,
    ExportSource,
    FormatResult,
    TargetsExistError,
)
from lora_studio.core.export.verify import Verification

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "DTYPES",
    "FORMATS",
    "QUANTS",
    "STAGING_PREFIX",
    "ExportError",
    "ExportJob",
    "ExportPlan",
    "ExportProgress",
    "ExportReport",
    "ExportSource",
    "FormatResult",
    "TargetsExistError",
    "Verification",
    "export",
    "parse_formats",
    "parse_quants",
    "plan_export",
    "resolve_source",
    "run_export",
    "size_text",
]
