"""Data: a user's file, in any of the community formats, turned into what the model trains on.

``files`` reads JSON, JSONL, CSV, Parquet and TXT record by record (with file and line for every
error); ``formats`` recognises Alpaca, ShareGPT, OpenAI ``messages``, prompt/completion and plain
text (and the column layouts of other tools) and turns each record into one conversation, whose
turns ``turns`` reads (speakers, typed content parts, tool calls, reasoning); ``notes`` says what a
file holds besides its records (labels, media, unknown speakers) in the ``report``; ``preference``
does the same for chosen/rejected pairs and KTO's labelled answers. ``render`` applies the model's
chat template and marks which tokens are trained on; ``prepare`` (``prepare_preference`` for pairs
and labels) builds the tokenized dataset, its statistics and the preview that shows a record
exactly as the model will see it. Depends only on the base (``core``).
"""

from lora_studio.core.data.files import RawRecord, SourceFile, open_source, resolve_paths
from lora_studio.core.data.formats import (
    FIELDS,
    Conversation,
    DetectionReport,
    error_dict,
    load_conversations,
    scan_conversations,
)
from lora_studio.core.data.preference import (
    LabelledAnswer,
    PreferencePair,
    PreferenceReport,
    load_preferences,
    scan_preferences,
    sniff_preference_format,
)
from lora_studio.core.data.prepare import (
    DatasetStats,
    PreparedDataset,
    PreviewExample,
    build_dataset,
    check_tool_calls,
    make_collator,
    padding_fraction,
    padding_report,
    prepare_dataset,
    preview,
    preview_conversations,
    split_conversations,
)
from lora_studio.core.data.prepare_preference import (
    EncodedAnswer,
    EncodedPair,
    collate_preferences,
    encode_items,
    prepare_preferences,
)
from lora_studio.core.data.render import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE,
    Encoder,
    Example,
    TemplateProblem,
    chat_template_for,
    template_note,
)

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "FIELDS",
    "IGNORE",
    "Conversation",
    "DatasetStats",
    "DetectionReport",
    "EncodedAnswer",
    "EncodedPair",
    "Encoder",
    "Example",
    "LabelledAnswer",
    "PreferencePair",
    "PreferenceReport",
    "PreparedDataset",
    "PreviewExample",
    "RawRecord",
    "SourceFile",
    "TemplateProblem",
    "build_dataset",
    "chat_template_for",
    "check_tool_calls",
    "collate_preferences",
    "encode_items",
    "error_dict",
    "load_conversations",
    "load_preferences",
    "make_collator",
    "open_source",
    "padding_fraction",
    "padding_report",
    "prepare_dataset",
    "prepare_preferences",
    "preview",
    "preview_conversations",
    "resolve_paths",
    "scan_conversations",
    "scan_preferences",
    "sniff_preference_format",
    "split_conversations",
    "template_note",
]
