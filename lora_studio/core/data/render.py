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

Tool calls and reasoning. An assistant turn's ``tool_calls`` are rendered by the template itself
(``apply_chat_template(..., tools=...)``) and trained like its text; tool results are context. A
template with no ``tool_calls`` in it cannot render calls: such conversations are refused with one
message, never trained as empty answers. Reasoning (``reasoning_content``) goes to the template when
it renders it (Qwen3 and others), else into the answer as a ``<think>…</think>`` block, as
distilled reasoning models write it; either way it is part of the trained answer.

Plain-text documents are the text followed by the end-of-sequence token, every token trained.
Without a chat template, :data:`FALLBACK_CHAT_TEMPLATE` is used (and reported): each turn is
``Role:\\n<content>\\n\\n``, assistant turns end with the eos token before the blank line.

Qt-free; the tokenizer is passed in, nothing heavy is imported here.
"""

from __future__ import annotations

import json
import re
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
_THINKING_KEY = re.compile(r"message(\.thinking\b|\[\s*['\"]thinking['\"]\s*\])")
NO_TOOL_CALLS = "the model's chat template cannot render tool calls"
NO_TOOL_CALLS_HINT = (
    "train a model whose chat template supports tools (Qwen2.5 or Qwen3 Instruct, Llama 3.1+ Instruct, "
    "Mistral Instruct); the bundled default model's template has no tool support — or write the calls as "
    "ShareGPT function_call / observation turns, which are trained as plain text"
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
        self.renders_calls = "tool_calls" in self.template and not self.fallback
        self.reasoning_key = (
            "reasoning_content"
            if "reasoning_content" in self.template
            else "thinking"
            if _THINKING_KEY.search(self.template)
            else None
        )
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
            messages, tools = self.prepared(conv)
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

    def prepared(self, conv: Conversation) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The messages and tools as this template takes them (reasoning placed, tools noted)."""
        if not self.renders_calls and any(m.get("tool_calls") for m in conv.messages):
            raise TemplateProblem(
                f"the conversation has tool calls, but {NO_TOOL_CALLS}; {NO_TOOL_CALLS_HINT}"
            )
        messages = [_with_reasoning(m, self.reasoning_key) for m in conv.messages]
        return _with_tools(messages, conv.tools, self.renders_tools)

    def kind_spans(self, conv: Conversation) -> list[tuple[int, int, str]]:
        """Character spans of the rendered conversation that are tool calls, tool results or reasoning.

        For the preview only (a few renders per turn). A turn's span runs from where the rendering
        of the turns before it stops matching the whole to where its own does, so a template that
        groups consecutive results (Qwen) still gives each result its own span. [] when the
        template renders prefixes differently.
        """
        if conv.text is not None:
            return []
        try:
            return self._kind_spans(conv)
        except TemplateProblem:
            return []

    def _kind_spans(self, conv: Conversation) -> list[tuple[int, int, str]]:
        messages, tools = self.prepared(conv)
        full = self.render(messages, tools)
        ends = [0] + [_common(self.render(messages[: i + 1], tools), full) for i in range(len(messages))]
        spans = []
        shift = len(messages) - len(conv.messages)  # a tools note may have been put first
        for i, message in enumerate(messages):
            start, end = ends[i], ends[i + 1]
            original = conv.messages[i - shift] if i >= shift else message
            reasoning = (original.get("reasoning_content") or "").strip()
            found = full.find(reasoning, start, end) if reasoning else -1
            if found >= 0:
                spans.append((found, found + len(reasoning), "reasoning"))
                start = found + len(reasoning)
            if message["role"] == "tool":
                spans.append((start, end, "tool_result"))
            elif message.get("tool_calls"):
                if found < 0:  # from where the assistant's own tokens start, after its header
                    start = max(start, _common(self.render(messages[:i], tools, generation=True), full))
                text = original["content"].strip()
                at = full.find(text, start, end) if text else -1
                call_start = at + len(text) if at >= 0 else start
                # up to the end-of-turn token: the newline a template writes after it is not generated
                spans.append((call_start, call_start + len(full[call_start:end].rstrip()), "tool_call"))
        return sorted(s for s in spans if s[1] > s[0])

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


def _common(a: str, b: str) -> int:
    """Length of the common start of two strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _with_reasoning(message: dict[str, Any], key: str | None) -> dict[str, Any]:
    """Reasoning where the template reads it, or as a ``<think>`` block before the answer."""
    reasoning = message.get("reasoning_content")
    if not reasoning or key == "reasoning_content":
        return message
    out = {k: v for k, v in message.items() if k != "reasoning_content"}
    if key is not None:
        out[key] = reasoning
    else:
        out["content"] = f"<think>\n{reasoning.strip()}\n</think>\n\n{message['content']}"
    return out


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
