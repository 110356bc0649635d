"""One list of conversation turns → canonical messages: speakers, content parts, tool calls, reasoning.

Files spell a turn in many ways: ShareGPT ``{from, value}``, OpenAI ``{role, content}`` with
``content`` as text or a list of typed parts (``{"type": "text", "text"}`` or ``{..., "value"}``),
ms-swift's ``{human, assistant}`` pairs; the assistant may call tools (``tool_calls``, or the older
``function_call``) and carry its reasoning (``reasoning_content``, ``thinking``, or ``reasoning``
parts). All of them become one canonical message:

``{"role", "content": str}`` plus, where present, ``tool_calls`` (OpenAI form, ``arguments`` as a
JSON object — what chat templates expect), ``reasoning_content`` (assistant), and ``tool_call_id``
/ ``name`` (tool results).

``content`` is always a string, so code that reads only text (placeholders, evaluation, preference
data) keeps working. Anything that would be trained on wrongly is a located error naming the field:
an image part in a text model, a tool call whose arguments are not JSON, a result for a call nobody
made. Qt-free and light: only the standard library.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lora_studio.core.data.files import RawRecord

Message = dict[str, Any]

#: Speaker names found in the wild → canonical role. ShareGPT's ``function_call`` is the assistant
#: calling a tool (trained); ``observation`` is the tool's answer (not trained).
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
TEXT_PARTS = {"text", "input_text", "output_text"}
REASONING_PARTS = {"reasoning", "thinking", "reasoning_text"}
CALL_PARTS = {"tool_call", "tool_use", "function_call"}
#: Part types a text model cannot read, by what they hold (named in the error).
MEDIA_PARTS = {
    "image": "image",
    "image_url": "image",
    "input_image": "image",
    "audio": "audio",
    "input_audio": "audio",
    "audio_url": "audio",
    "video": "video",
    "video_url": "video",
    "file": "file",
    "input_file": "file",
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
#: Speaker names that say which side they are on, for the guessed role map.
_USER_WORDS = ("customer", "client", "patient", "student", "learner", "guest", "caller", "visitor",
               "buyer", "questioner", "asker", "prompter", "person", "human", "user", "player", "kid")  # fmt: skip
_ASSISTANT_WORDS = ("agent", "bot", "assistant", "support", "doctor", "teacher", "tutor", "expert",
                    "advisor", "adviser", "consultant", "helper", "responder", "answerer", "therapist",
                    "counselor", "representative", "operator", "staff", "ai", "gpt", "llm", "model")  # fmt: skip


def role_of(name: str, role_map: dict[str, str]) -> str | None:
    """The canonical role of a speaker name: the user's mapping first (any capitals), then :data:`ROLES`."""
    if name in role_map:
        return role_map[name]
    folded = name.strip().lower()
    for key, role in role_map.items():
        if key.lower() == folded:
            return role
    return ROLES.get(folded)


def read_turns(
    raw: RawRecord,
    column: str,
    role_key: str,
    content_key: str,
    role_map: dict[str, str] | None = None,
) -> list[Message]:
    """The turns in ``raw.data[column]`` as canonical messages, with at least one assistant turn."""
    value = raw.data.get(column)
    if not isinstance(value, list):
        raise raw.error(
            f"must be a list of {{{role_key}, {content_key}}} objects, not {kind_of(value)}", field=column
        )
    if not value:
        raise raw.error("is an empty list: the conversation has no turns", field=column)
    messages: list[Message] = []
    for j, turn in enumerate(value):
        where = f"{column}[{j}]"
        if not isinstance(turn, dict):
            raise raw.error(
                f"must be a {{{role_key}, {content_key}}} object, not {kind_of(turn)}", field=where
            )
        if role_key not in turn and "role" not in turn and ("human" in turn or "assistant" in turn):
            messages += _pair(raw, turn, where)
            continue
        rk, ck = role_key, content_key
        if rk not in turn and "role" in turn:  # ShareGPT files written with OpenAI keys
            rk, ck = "role", "content"
        messages.append(_message(raw, turn, rk, ck, where, role_map or {}, messages))
    if not any(m["role"] == "assistant" for m in messages):
        raise raw.error("the conversation has no assistant turn, so there is nothing to learn", field=column)
    return messages


def _pair(raw: RawRecord, turn: dict[str, Any], where: str) -> list[Message]:
    """ms-swift's ``{"human": ..., "assistant": ...}``: one exchange, both sides text."""
    out = []
    for key, role in (("human", "user"), ("assistant", "assistant")):
        text = turn.get(key)
        if not isinstance(text, str):
            problem = "is missing" if key not in turn else f"must be text, not {kind_of(text)}"
            raise raw.error(problem, field=f"{where}.{key}")
        if role == "assistant" and not text.strip():
            raise raw.error("empty assistant answer", field=f"{where}.{key}")
        out.append({"role": role, "content": text})
    return out


def _message(
    raw: RawRecord,
    turn: dict[str, Any],
    rk: str,
    ck: str,
    where: str,
    role_map: dict[str, str],
    earlier: list[Message],
) -> Message:
    role = turn.get(rk)
    if not isinstance(role, str):
        problem = "is missing" if rk not in turn else f"must be text, not {kind_of(role)}"
        raise raw.error(problem, field=f"{where}.{rk}")
    canonical = role_of(role, role_map)
    if canonical is None:
        raise raw.error(
            f"unknown role '{role}'",
            field=f"{where}.{rk}",
            hint=f"map it to a role with data.role_map (e.g. --role-map '{role}={_guess(role, 0, 0)}'; on the Data page: "
            "Speakers), or use system, user, assistant or tool (ShareGPT: human, gpt, function_call, "
            "observation)",
        )
    calls = _calls(raw, turn, where) if canonical == "assistant" else []
    if canonical != "assistant" and (turn.get("tool_calls") or isinstance(turn.get("function_call"), dict)):
        key = "tool_calls" if turn.get("tool_calls") else "function_call"
        raise raw.error(
            f"only assistant turns call tools, and this is a {canonical} turn", field=f"{where}.{key}"
        )
    content = turn.get(ck)
    if content is None and calls:
        text, reasoning, part_calls = "", [], []
    else:
        text, reasoning, part_calls = read_content(raw, turn, ck, f"{where}.{ck}", canonical)
    calls += part_calls
    reasoning += _reasoning_fields(raw, turn, where, canonical)
    message: Message = {"role": canonical, "content": text}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    if canonical == "assistant" and not text.strip() and not calls:
        what = "only reasoning, no answer" if reasoning else "empty assistant answer"
        raise raw.error(what, field=f"{where}.{ck}")
    if canonical == "tool":
        _tool_result(raw, turn, where, message, earlier)
    return message


def read_content(
    raw: RawRecord, turn: dict[str, Any], key: str, where: str, role: str = "assistant"
) -> tuple[str, list[str], list[Message]]:
    """A turn's content as (text, reasoning pieces, tool calls): a string, or a list of typed parts."""
    content = turn.get(key)
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        problem = "is missing" if key not in turn else f"must be text, not {kind_of(content)}"
        raise raw.error(problem, field=where)
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[Message] = []
    for k, part in enumerate(content):
        kind = part.get("type", "text" if "text" in part else None)
        at = f"{where}[{k}]"
        if kind in TEXT_PARTS:
            texts.append(_part_text(raw, part, at, ("text", "value")))
        elif kind in REASONING_PARTS:
            if role != "assistant":
                raise raw.error(f"a {kind} part belongs to an assistant turn, not a {role} turn", field=at)
            reasoning.append(_part_text(raw, part, at, ("text", "value", kind, "reasoning", "thinking")))
        elif kind in CALL_PARTS:
            if role != "assistant":
                raise raw.error(f"a {kind} part belongs to an assistant turn, not a {role} turn", field=at)
            calls.append(tool_call(raw, part, at))
        elif kind in MEDIA_PARTS:
            media = MEDIA_PARTS[kind]
            raise raw.error(
                f"has {'an' if media[0] in 'aeiou' else 'a'} {media} part (type '{kind}'): the model reads "
                "text only, so it cannot be trained on",
                field=at,
                hint=f"remove the {media} parts (or the records with them), or describe the {media} in text",
            )
        else:
            named = f"type '{kind}'" if isinstance(kind, str) else "no 'type'"
            raise raw.error(
                f"a content part with {named}: parts must be text, reasoning or a tool call",
                field=at,
                hint='text parts are {"type": "text", "text": "..."}',
            )
    return "".join(texts), reasoning, calls


def text_content(raw: RawRecord, turn: dict[str, Any], key: str, where: str) -> str:
    """A turn's content as plain text, for readers that keep only text (preference data)."""
    text, reasoning, calls = read_content(raw, turn, key, where)
    if reasoning or calls:
        what = "reasoning" if reasoning else "tool calls"
        raise raw.error(f"has {what}, which preference data cannot hold yet; only text parts", field=where)
    return text


def _part_text(raw: RawRecord, part: dict[str, Any], at: str, keys: tuple[str, ...]) -> str:
    for key in keys:
        value = part.get(key)
        if isinstance(value, str):
            return value
    found = next((k for k in keys if k in part), None)
    if found is not None:
        raise raw.error(f"must be text, not {kind_of(part[found])}", field=f"{at}.{found}")
    raise raw.error(f"has no text: expected a '{keys[0]}' field", field=at)


def _reasoning_fields(raw: RawRecord, turn: dict[str, Any], where: str, role: str) -> list[str]:
    found = []
    for key in REASONING_KEYS:
        value = turn.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise raw.error(f"must be text, not {kind_of(value)}", field=f"{where}.{key}")
        if role != "assistant":
            raise raw.error(
                f"only assistant turns carry reasoning, and this is a {role} turn", field=f"{where}.{key}"
            )
        found.append(value)
    return found


def _calls(raw: RawRecord, turn: dict[str, Any], where: str) -> list[Message]:
    value = turn.get("tool_calls")
    calls = []
    if value is not None and value != []:
        if not isinstance(value, list):
            raise raw.error(
                f"must be a list of tool calls, not {kind_of(value)}", field=f"{where}.tool_calls"
            )
        calls = [tool_call(raw, call, f"{where}.tool_calls[{k}]") for k, call in enumerate(value)]
    legacy = turn.get("function_call")
    if isinstance(legacy, dict):  # OpenAI's older functions API: one call, no id
        calls.append(tool_call(raw, {"function": legacy}, f"{where}.function_call"))
    return calls


def tool_call(raw: RawRecord, call: Any, where: str) -> Message:
    """One call in OpenAI's form, ``{"type": "function", "id"?, "function": {"name", "arguments"}}``.

    Also read: flat ``{"name", "arguments"}`` and Anthropic-style ``{"name", "input"}``. Arguments
    given as a JSON string (OpenAI's spelling) become an object, which is what templates render.
    """
    if not isinstance(call, dict):
        raise raw.error(f"must be a tool call object, not {kind_of(call)}", field=where)
    nested = isinstance(call.get("function"), dict)
    fn = call["function"] if nested else call
    at = f"{where}.function" if nested else where
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        problem = "is missing" if name is None else "must be the tool's name, not " + kind_of(name)
        raise raw.error(f"the tool call's name {problem}", field=f"{at}.name")
    key = "arguments" if "arguments" in fn else "input" if "input" in fn else "arguments"
    arguments = fn.get(key, {})
    if arguments is None or arguments == "":
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise raw.error(f"is not valid JSON ({exc.msg})", field=f"{at}.{key}") from None
    if not isinstance(arguments, dict):
        raise raw.error(f"must be a JSON object of arguments, not {kind_of(arguments)}", field=f"{at}.{key}")
    out: Message = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str) and call["id"]:
        out["id"] = call["id"]
    return out


def _tool_result(
    raw: RawRecord, turn: dict[str, Any], where: str, message: Message, earlier: list[Message]
) -> None:
    """``tool_call_id`` and ``name`` kept for the template; an id must answer a call made before."""
    for key in ("tool_call_id", "name"):
        value = turn.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise raw.error(f"must be text, not {kind_of(value)}", field=f"{where}.{key}")
        message[key] = value
    call_id = message.get("tool_call_id")
    made = [c.get("id") for m in earlier for c in m.get("tool_calls", ())]
    if call_id and any(made) and call_id not in made:
        raise raw.error(
            f"answers tool call '{call_id}', but no earlier assistant turn made a call with that id",
            field=f"{where}.tool_call_id",
            hint=f"the calls made before it are {', '.join(repr(i) for i in made if i)}",
        )
    if "name" not in message and call_id:
        name = next(
            (
                c["function"]["name"]
                for m in earlier
                for c in m.get("tool_calls", ())
                if c.get("id") == call_id
            ),
            None,
        )
        if name:
            message["name"] = name


def speakers(
    raws: list[RawRecord], column: str | None, role_key: str, role_map: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Speaker names no role is known for: turns, records and a guessed role, most frequent first.

    The guess reads the name (``Customer`` → user, ``Agent`` → assistant), else where the speaker
    talks: whoever has the last word in most conversations is the assistant.
    """
    turns: Counter[str] = Counter()
    records: Counter[str] = Counter()
    last: Counter[str] = Counter()
    first: Counter[str] = Counter()
    for raw in raws:
        value = raw.data.get(column) if column else None
        if not isinstance(value, list):
            continue
        names: list[str | None] = []  # None: a speaker with a known role
        for turn in value:
            role = turn.get(role_key, turn.get("role")) if isinstance(turn, dict) else None
            if isinstance(role, str) and role_of(role, role_map) != "system":
                names.append(role if role_of(role, role_map) is None else None)
        unknown = [n for n in names if n is not None]
        turns.update(unknown)
        records.update(set(unknown))
        if names and names[0] is not None:
            first[names[0]] += 1
        if names and names[-1] is not None:
            last[names[-1]] += 1
    return {
        name: {"turns": turns[name], "records": records[name], "guess": _guess(name, first[name], last[name])}
        for name, _ in turns.most_common()
    }


def _guess(name: str, first: int, last: int) -> str:
    folded = name.strip().lower()
    words = set(folded.replace("_", " ").replace("-", " ").split())
    for role, vocabulary in (("user", _USER_WORDS), ("assistant", _ASSISTANT_WORDS)):
        if words & set(vocabulary) or any(len(w) > 3 and w in folded for w in vocabulary):
            return role
    return "assistant" if last > first else "user"


def role_map_text(mapping: dict[str, str]) -> str:
    """``Customer=user,Agent=assistant``: what ``--role-map`` takes."""
    return ",".join(f"{name}={role}" for name, role in mapping.items())


def kind_of(value: Any) -> str:
    """What a field holds, in the words the error messages use."""
    names = {list: "a list", dict: "an object", bool: "a boolean", type(None): "null", str: "text"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
