"""Conversations → token ids and loss labels, through the model's chat template.

Loss masks. Labels are ``-100`` except on the assistant's turns, found by rendering prefixes of the
conversation (chat templates such as SmolLM2's have no ``{% generation %}`` markers): an assistant
turn starts where ``messages[:i]`` rendered with the generation prompt ends, and ends where
``messages[:i+1]`` rendered ends, minus trailing whitespace. So the answer *and* its end-of-turn
token (``<|im_end|>`` in ChatML, ``<|eot_id|>`` in Llama 3) are learnt — the model must learn to
stop — but the newline ChatML writes after ``<|im_end|>`` is not: generation stops at the
end-of-turn token, so that newline is never generated, only re-inserted by the template. Tokens are
matched to characters with the tokenizer's offsets (any overlap with a span trains the token).
A template that renders a prefix differently from the start of the whole conversation cannot be
masked this way, and is refused with a located error suggesting ``train_on = 'all'``.

Plain-text documents are the text followed by the end-of-sequence token, every token trained.
Without a chat template, :data:`FALLBACK_CHAT_TEMPLATE` is used (and reported): each turn is
``Role:\\n<content>\\n\\n``, assistant turns end with the eos token before the blank line.

Qt-free; the tokenizer is passed in, nothing heavy is imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lora_studio.core.data.formats import Conversation

IGNORE = -100
#: Used when a tokenizer has no chat template. Chat and export use it too, so that a model trained
#: with it is prompted the way it learnt.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- (message['role'] | capitalize) + ':\\n' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' and eos_token -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:\\n' -}}{%- endif -%}"
)
_TOOLS_NOTE = (
    "You can call these tools. To call one, answer with a JSON object naming it and its arguments:\n"
)


@dataclass
class Example:
    """One tokenized conversation, cut to ``max_seq_len``; ``text`` and ``offsets`` serve the preview."""

    ids: list[int]
    labels: list[int]
    text: str
    offsets: list[tuple[int, int]] | None
    original_length: int
    conversation: Conversation

    @property
    def trainable(self) -> int:
        # The label at position 0 is never a target: the model predicts token t+1 from 0..t.
        return sum(1 for label in self.labels[1:] if label != IGNORE)


class TemplateProblem(Exception):
    """The chat template cannot render a conversation; the caller turns it into a located DatasetError."""


def chat_template_for(tokenizer: Any) -> tuple[str, bool]:
    """The template to render with, and whether it is the fallback (the tokenizer has none)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        template = template.get("default") or next(iter(template.values()), None)
    if template:
        return template, False
    return FALLBACK_CHAT_TEMPLATE, True


class Encoder:
    """Turns conversations into (ids, labels) for one tokenizer, template and ``train_on``."""

    def __init__(self, tokenizer: Any, *, train_on: str, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.template, self.fallback = chat_template_for(tokenizer)
        self.renders_tools = "tools" in self.template
        self.train_on = train_on
        self.max_seq_len = max_seq_len

    def render(
        self, messages: list[dict[str, str]], tools: list[Any] | None, *, generation: bool = False
    ) -> str:
        extra = {"tools": tools} if tools and self.renders_tools else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=generation,
                **extra,
            )
        except Exception as exc:  # jinja raises TemplateError, or anything a template's own code raises
            raise TemplateProblem(f"the chat template cannot render this conversation ({exc})") from None

    def encode(self, conv: Conversation, *, answer_from: int = 0) -> Example:
        """``answer_from``: assistant turns before this message index are context, not trained
        (a preference pair's prompt may hold earlier assistant turns; only the answer is learnt)."""
        if conv.text is not None:
            text = conv.text + (self.tokenizer.eos_token or "")
            spans = None
        else:
            messages, tools = _with_tools(conv.messages, conv.tools, self.renders_tools)
            answer_from += len(messages) - len(conv.messages)  # a system note may have been put first
            text = self.render(messages, tools)
            spans = (
                None if self.train_on == "all" else self.assistant_spans(messages, tools, text, answer_from)
            )
        fast = bool(getattr(self.tokenizer, "is_fast", False))
        enc = self.tokenizer(
            text,
            add_special_tokens=conv.text is not None,
            return_offsets_mapping=fast,
            return_attention_mask=False,
        )
        ids = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]] if fast else None
        if spans is None:
            labels = list(ids)
        else:
            flags = (
                _trained_flags(offsets, spans) if offsets else self._flags_by_prefix(text, spans, len(ids))
            )
            labels = [tid if flag else IGNORE for tid, flag in zip(ids, flags, strict=True)]
        n = self.max_seq_len
        return Example(ids[:n], labels[:n], text, offsets[:n] if offsets else None, len(ids), conv)

    def assistant_spans(
        self, messages: list[dict[str, str]], tools: Any, full: str, answer_from: int = 0
    ) -> list[tuple[int, int]]:
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or i < answer_from:
                continue
            before = self.render(messages[:i], tools, generation=True)
            through = self.render(messages[: i + 1], tools)
            if not (through.startswith(before) and full.startswith(through)):
                raise TemplateProblem(
                    f"the chat template renders this conversation differently when it is cut after turn {i + 1}, "
                    "so the assistant's tokens cannot be located; use train_on = 'all' with this model"
                )
            spans.append((len(before), max(len(before), len(through.rstrip()))))
        return spans

    def _flags_by_prefix(self, text: str, spans: list[tuple[int, int]], count: int) -> list[bool]:
        """For tokenizers without offsets: token boundaries from the token counts of text prefixes."""
        flags = [False] * count
        for start, end in spans:
            a = len(self.tokenizer(text[:start], add_special_tokens=False)["input_ids"])
            b = len(self.tokenizer(text[:end], add_special_tokens=False)["input_ids"])
            for i in range(a, min(b, count)):
                flags[i] = True
        return flags


def _trained_flags(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    flags = []
    k = 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        flags.append(k < len(spans) and end > start and start < spans[k][1] and end > spans[k][0])
    return flags


def _with_tools(
    messages: list[dict[str, str]], tools: list[Any] | None, renders_tools: bool
) -> tuple[list[dict[str, str]], list[Any] | None]:
    """Tool definitions go to the template when it renders them, else into the system prompt."""
    if not tools or renders_tools:
        return messages, tools
    note = _TOOLS_NOTE + json.dumps(tools, ensure_ascii=False, default=str)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + note}, *messages[1:]], None
    return [{"role": "system", "content": note}, *messages], None


def template_note(encoder: Encoder, fmt: str) -> str:
    """How examples were rendered, in words for the stats."""
    if fmt == "text":
        return "none: plain text followed by the end-of-sequence token"
    if encoder.fallback:
        return "simple fallback template (the model has no chat template): 'Role:\\n<text>\\n\\n' per turn"
    return "the model's chat template"
