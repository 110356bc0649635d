"""Ollama Modelfile beside a GGUF: FROM, a TEMPLATE translated from the chat template, stops, SYSTEM.

The usual reason an exported model rambles in Ollama is a missing template or stop token, so the
template is not guessed from the model's name: each known chat layout (ChatML, Llama 3, Zephyr,
Phi-3, Gemma, Llama 2 / Mistral) is rendered with the same system prompt and question as the
model's own Jinja template, and the one that renders identically is written. Verification reads
the written Modelfile back and repeats that comparison.

Templates use Ollama's ``.System`` / ``.Prompt`` / ``.Response`` form, which a tiny renderer here
can evaluate exactly (``if``, ``end`` and variables, with ``{{-``/``-}}`` trimming).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.export.verify import Verification

_MARK_SYSTEM = "SYSTEM-PROMPT-4c1d"
_MARK_USER = "What is your name?"


@dataclass(frozen=True)
class ChatLayout:
    name: str
    template: str
    stops: tuple[str, ...]


LAYOUTS = (
    ChatLayout(
        "chatml",
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
        ("<|im_end|>", "<|im_start|>"),
    ),
    ChatLayout(
        "llama3",
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>",
        ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
    ),
    ChatLayout(
        "zephyr",
        "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
        "{{ if .Prompt }}<|user|>\n{{ .Prompt }}</s>\n{{ end }}<|assistant|>\n{{ .Response }}</s>\n",
        ("</s>", "<|user|>", "<|system|>"),
    ),
    ChatLayout(
        "phi3",
        "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
        "{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n",
        ("<|end|>", "<|user|>", "<|assistant|>"),
    ),
    ChatLayout(
        "gemma",
        "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n"
        "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n",
        ("<end_of_turn>", "<start_of_turn>"),
    ),
    ChatLayout(
        "llama2",
        "[INST] {{ if .System }}<<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ end }}{{ .Prompt }} [/INST]{{ .Response }}</s>",
        ("[INST]", "[/INST]", "</s>"),
    ),
    ChatLayout(
        "mistral",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]{{ .Response }}</s>",
        ("[INST]", "[/INST]", "</s>"),
    ),
)
_PLAIN = ChatLayout(
    "plain", "{{ if .System }}{{ .System }}\n\n{{ end }}User: {{ .Prompt }}\nAssistant:{{ .Response }}\n", ()
)


# -- a renderer for Ollama's legacy template form ------------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def render(template: str, values: dict[str, str], *, for_generation: bool = True) -> str:
    """Evaluate ``if``/``end``/``.Var`` actions; for generation, stop at ``.Response`` as Ollama does."""
    out: list[str] = []
    active = [True]
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if all(active):
            out.append(text)
        trim_next = bool(match.group(3))
        pos = match.end()
        action = match.group(2)
        if action.startswith("if "):
            active.append(bool(values.get(action[3:].strip().lstrip("."), "")))
        elif action == "end":
            active.pop()
        elif action.startswith("."):
            key = action[1:]
            if key == "Response" and for_generation:
                return "".join(out)
            if all(active):
                out.append(values.get(key, ""))
        else:
            raise ValueError(f"unsupported template action '{action}'")
    tail = template[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


# -- matching the model's chat template ----------------------------------------------------------


def _hf(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates may refuse a system role; that check is then skipped
        return None
    bos = tokenizer.bos_token
    if bos and isinstance(text, str) and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]  # llama.cpp adds BOS itself, as the tokenizer does
    return text


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def default_system(layout: ChatLayout, tokenizer: Any) -> str | None:
    """The system prompt the chat template adds on its own (SmolLM2 adds one), or None."""
    hf = _hf(tokenizer, [{"role": "user", "content": _MARK_USER}])
    if hf is None or hf == render(layout.template, {"Prompt": _MARK_USER}):
        return None
    marked = render(layout.template, {"System": _MARK_SYSTEM, "Prompt": _MARK_USER})
    head, _, tail = marked.partition(_MARK_SYSTEM)
    if hf.startswith(head) and hf.endswith(tail) and len(hf) >= len(head) + len(tail):
        return hf[len(head) : len(hf) - len(tail)]
    return None


def check_layout(template: str, tokenizer: Any, system: str | None) -> list[str]:
    """Differences between an Ollama template and the model's chat template (empty when identical)."""
    problems = []
    hf = _hf(
        tokenizer, [{"role": "system", "content": _MARK_SYSTEM}, {"role": "user", "content": _MARK_USER}]
    )
    ours = render(template, {"System": _MARK_SYSTEM, "Prompt": _MARK_USER})
    if hf is not None and hf != ours:
        problems.append(f"with a system prompt: expected {hf!r}, the TEMPLATE gives {ours!r}")
    hf = _hf(tokenizer, [{"role": "user", "content": _MARK_USER}])
    ours = render(template, {"System": system or "", "Prompt": _MARK_USER})
    if hf is not None and hf != ours:
        problems.append(f"without one: expected {hf!r}, the TEMPLATE and SYSTEM give {ours!r}")
    return problems


def choose_layout(tokenizer: Any) -> tuple[ChatLayout, str | None, bool]:
    """(layout, default system prompt, renders identically). Unknown templates get the best guess."""
    vocab = tokenizer.get_vocab()
    candidates = [layout for layout in LAYOUTS if layout.stops[0] in vocab]
    for layout in candidates:
        system = default_system(layout, tokenizer)
        if not check_layout(layout.template, tokenizer, system):
            return layout, system, True
    layout = candidates[0] if candidates else _PLAIN
    return layout, default_system(layout, tokenizer), False


# -- the file ------------------------------------------------------------------------------------


def modelfile_text(
    gguf_name: str, name: str, tokenizer: Any, system_prompt: str | None
) -> tuple[str, list[str]]:
    """The Modelfile and notes; ``system_prompt`` (the run's data.system_prompt) wins over the template's."""
    layout, default, exact = choose_layout(tokenizer)
    system = system_prompt or default
    vocab = tokenizer.get_vocab()
    stops = [s for s in layout.stops if s in vocab]
    eos = tokenizer.eos_token
    if eos and eos not in stops:
        stops.append(eos)
    notes = [f"chat layout: {layout.name}"]
    if not exact:
        notes.append("the chat template matched no known layout; TEMPLATE is a best guess — check it")
    lines = [
        f"# Ollama Modelfile for {name}, written by LoRA Studio.",
        f"# Create the model with:  ollama create {_slug(name)} -f Modelfile",
        f"FROM ./{gguf_name}",
        "",
        f'TEMPLATE """{layout.template}"""',
    ]
    if system:
        lines += ["", f'SYSTEM """{system}"""']
    lines.append("")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n", notes


def parse_modelfile(text: str) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and stop parameters, read the way Ollama reads them."""
    found: dict[str, Any] = {"stops": []}
    for match in re.finditer(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER)\s+("""(.*?)"""|(.*?))$', text, re.M | re.S):
        command, value = match.group(1), match.group(3) if match.group(3) is not None else match.group(4)
        if command == "PARAMETER":
            key, _, rest = value.partition(" ")
            if key == "stop":
                found["stops"].append(rest.strip().strip('"'))
        else:
            found[command.lower()] = value
    return found


def verify_modelfile(path: Path, tokenizer: Any) -> Verification:
    """Read the file back: FROM names a GGUF beside it, stops are real tokens, TEMPLATE (+ SYSTEM)
    renders exactly as the model's chat template does."""
    parsed = parse_modelfile(path.read_text(encoding="utf-8"))
    problems = []
    source = str(parsed.get("from", "")).strip()
    if not source.endswith(".gguf") or not (path.parent / source).is_file():
        problems.append(f"FROM {source!r} does not name a GGUF file beside the Modelfile")
    vocab = tokenizer.get_vocab()
    unknown = [s for s in parsed["stops"] if s not in vocab]
    if unknown:
        problems.append(f"stop strings that are not tokens of this model: {unknown}")
    if not parsed["stops"]:
        problems.append("no stop tokens")
    template = parsed.get("template")
    if not template:
        problems.append("no TEMPLATE")
    else:
        problems += check_layout(template, tokenizer, parsed.get("system"))
    figures = {"template_match": bool(template) and not any("expected" in p for p in problems)}
    figures["stops"] = parsed["stops"]
    return Verification(
        not problems, "Modelfile read back; TEMPLATE rendered against the chat template", figures, problems
    )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"
