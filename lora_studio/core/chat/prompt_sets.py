"""Prompt sets: a saved list of prompts answered by the base model and the fine-tune, as one table.

One conversation shows one answer; a fixed list of prompts answered greedily by both models shows
what training changed, the same way every time, and exports as a Markdown table for a report. A
set is a small JSON file (``{"name", "system", "prompts"}``) in ``<config dir>/prompt-sets/``;
plain text (one prompt per line) and JSONL files can be imported. Both columns come from one
loaded model, the base with its adapter switched off (:meth:`ChatModel.answer`), so a set costs no
second copy of the weights (see ``prompt_set_run``). This module imports nothing heavy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.config import RunConfig
from lora_studio.core.errors import LoraStudioError
from lora_studio.core.paths import config_dir

#: What ``find_prompt_set`` accepts for "the run's own sample prompts" (config.training.sample_prompts).
SAMPLES = "samples"
#: Record keys a JSONL line's prompt is read from, first present wins ("instruction" + "input" join).
PROMPT_KEYS = ("prompt", "instruction", "question", "input", "text", "content")
FORMATS_HINT = "use a .txt file (one prompt per line), a .jsonl file (one prompt per line) or a saved set"


class PromptSetError(LoraStudioError):
    """A prompt set file cannot be read or saved, or a set is not usable."""


@dataclass
class PromptSet:
    """A named list of prompts, each asked on its own (no history), with an optional system prompt."""

    name: str
    prompts: list[str]
    system: str = ""

    def check(self) -> None:
        if not self.name.strip():
            raise PromptSetError("The prompt set has no name", hint="type a name for it")
        if not self.prompts:
            raise PromptSetError(f"Prompt set '{self.name}' has no prompts", hint="add at least one prompt")
        for number, prompt in enumerate(self.prompts, 1):
            if not prompt.strip():
                raise PromptSetError(
                    f"Prompt set '{self.name}': prompt {number} is empty", hint="type it or remove it"
                )

    def messages(self, prompt: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return [*system, {"role": "user", "content": prompt}]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "prompts": list(self.prompts)}


@dataclass(frozen=True)
class SavedPromptSet:
    """A file in the prompt-sets folder; ``problem`` says why it cannot be used (then count is 0)."""

    name: str
    path: Path
    count: int
    problem: str | None = None


# -- storage -------------------------------------------------------------------------------------


def prompt_sets_dir() -> Path:
    return config_dir() / "prompt-sets"


def slug(name: str) -> str:
    """The file name of a set: 'Identity checks!' -> 'identity-checks'."""
    return re.sub(r"[^\w.-]+", "-", name.strip().lower()).strip("-.") or "prompt-set"


def save_prompt_set(prompt_set: PromptSet, folder: Path | None = None) -> Path:
    """Write ``<folder>/<slug>.json`` atomically (a set of the same name is replaced)."""
    prompt_set.check()
    path = (folder or prompt_sets_dir()) / f"{slug(prompt_set.name)}.json"
    try:
        atomic_write_text(path, json.dumps(prompt_set.to_dict(), indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise PromptSetError(
            f"{path}: cannot be saved ({exc.strerror or exc})", hint="check that the folder is writable"
        ) from None
    return path


def list_prompt_sets(folder: Path | None = None) -> list[SavedPromptSet]:
    """Every saved set by name; a broken file is listed with its problem rather than hidden."""
    folder = folder or prompt_sets_dir()
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            prompt_set = load_prompt_set(path)
        except PromptSetError as exc:
            found.append(SavedPromptSet(path.stem, path, 0, str(exc)))
        else:
            found.append(SavedPromptSet(prompt_set.name, path, len(prompt_set.prompts)))
    return sorted(found, key=lambda s: s.name.lower())


def delete_prompt_set(name: str, folder: Path | None = None) -> Path:
    path = _saved_path(name, folder)
    if path is None:
        raise PromptSetError(f"No saved prompt set named '{name}'", hint=_saved_hint(folder))
    path.unlink()
    return path


def load_prompt_set(path: str | Path) -> PromptSet:
    """A saved set (.json), or an import: .txt (one prompt per line) or .jsonl (one per line)."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl", ".txt"):
        raise PromptSetError(
            f"{path}: unknown prompt set file type '{suffix or '(none)'}'", hint=FORMATS_HINT
        )
    text = _read(path)
    if suffix == ".jsonl":
        prompt_set = PromptSet(path.stem, _jsonl_prompts(path, text))
    elif suffix == ".json":
        prompt_set = _json_set(path, text)
    else:
        prompt_set = PromptSet(path.stem, [line.strip() for line in text.splitlines() if line.strip()])
    if not prompt_set.prompts:
        raise PromptSetError(f"{path}: no prompts in the file", hint=FORMATS_HINT)
    return prompt_set


def find_prompt_set(spec: str, *, folder: Path | None = None, run: str | Path | None = None) -> PromptSet:
    """A file path, else a saved set's name, else ``samples``: the sample prompts of ``run``."""
    path = Path(spec).expanduser()
    if path.is_file():
        return load_prompt_set(path)
    saved = _saved_path(spec, folder)
    if saved is not None:
        return load_prompt_set(saved)
    if spec.strip().lower() == SAMPLES:
        return sample_prompt_set(run)
    raise PromptSetError(f"No prompt set file or saved prompt set named '{spec}'", hint=_saved_hint(folder))


def sample_prompt_set(run: str | Path | RunConfig | None, name: str | None = None) -> PromptSet:
    """The sample prompts a run answered before and after training (its config.training.sample_prompts).

    ``run`` is a run folder, one of its checkpoints or its adapter folder; a config; or None for
    the defaults. An adapter that did not come from a run has no sample prompts: that is an error.
    """
    if isinstance(run, RunConfig) or run is None:
        config, label = run or RunConfig(), name or "Sample prompts"
    else:
        folder = Path(run).expanduser()
        run_dir = next(
            (d for d in (folder, folder.parent, folder.parent.parent) if (d / "config.toml").is_file()), None
        )
        if run_dir is None:
            raise PromptSetError(
                f"{folder}: not a run folder, so it has no sample prompts",
                hint="choose a run (or one of its checkpoints), or give a prompt set file",
            )
        config, label = RunConfig.load(run_dir / "config.toml"), name or f"Sample prompts of {run_dir.name}"
    return PromptSet(label, list(config.training.sample_prompts), config.data.system_prompt or "")


def _saved_path(name: str, folder: Path | None) -> Path | None:
    wanted = name.strip().lower()
    for saved in list_prompt_sets(folder):
        if wanted in (saved.name.strip().lower(), saved.path.stem.lower()):
            return saved.path
    return None


def _saved_hint(folder: Path | None) -> str:
    names = [s.name for s in list_prompt_sets(folder) if s.problem is None]
    where = folder or prompt_sets_dir()
    saved = f"saved sets: {', '.join(names)} (in {where})" if names else f"no sets are saved in {where}"
    return f"{saved}; {FORMATS_HINT}, or '{SAMPLES}' for a run's sample prompts"


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptSetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PromptSetError(f"{path}, line {line}: not UTF-8 text", hint="save the file as UTF-8") from None


def _parse(text: str, where: str, line: int | None, hint: str) -> Any:
    """JSON, or an error at its line and column (``line`` given: one line of a JSONL file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptSetError(
            f"{where}, line {line or exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})", hint=hint
        ) from None


def _json_set(path: Path, text: str) -> PromptSet:
    data = _parse(text, str(path), None, "fix the file, or delete it and save the set again")
    if isinstance(data, list):  # a bare list of prompts
        return PromptSet(path.stem, [_record_prompt(path, i, item) for i, item in enumerate(data, 1)])
    if not isinstance(data, dict) or not isinstance(data.get("prompts"), list):
        raise PromptSetError(
            f"{path}: expected an object with a 'prompts' list",
            hint='e.g. {"name": "checks", "system": "", "prompts": ["What is your name?"]}',
        )
    for key in ("name", "system"):
        if not isinstance(data.get(key, ""), str):
            raise PromptSetError(f"{path}: '{key}' must be text, not {type(data[key]).__name__}")
    prompts = []
    for number, prompt in enumerate(data["prompts"], 1):
        if not isinstance(prompt, str) or not prompt.strip():
            what = "empty" if isinstance(prompt, str) else f"a {type(prompt).__name__}, not text"
            raise PromptSetError(
                f"{path}: prompt {number} is {what}", hint="every prompt must be non-empty text"
            )
        prompts.append(prompt)
    return PromptSet(data.get("name") or path.stem, prompts, data.get("system", ""))


def _jsonl_prompts(path: Path, text: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = _parse(line, str(path), number, "each line must be one JSON string or object")
        prompts.append(_record_prompt(path, number, item, unit="line"))
    return prompts


def _record_prompt(path: Path, number: int, item: Any, unit: str = "item") -> str:
    """A string, an object with a prompt field, or a conversation (its first user turn)."""
    where = f"{path}, {unit} {number}"
    if isinstance(item, str) and item.strip():
        return item
    if isinstance(item, dict):
        turns = item.get("messages") or item.get("conversations")
        if isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict) and str(turn.get("role", turn.get("from", ""))).lower() in (
                    "user",
                    "human",
                ):
                    content = turn.get("content", turn.get("value"))
                    if isinstance(content, str) and content.strip():
                        return content
            raise PromptSetError(f"{where}: the conversation has no user turn with text")
        if isinstance(item.get("instruction"), str) and item["instruction"].strip():
            extra = item.get("input") if isinstance(item.get("input"), str) else ""
            return "\n\n".join(p for p in (item["instruction"], extra) if p.strip())
        for key in PROMPT_KEYS:
            if isinstance(item.get(key), str) and item[key].strip():
                return item[key]
        raise PromptSetError(
            f"{where}: no prompt found", hint=f"give a text field named one of {', '.join(PROMPT_KEYS)}"
        )
    raise PromptSetError(
        f"{where}: expected text or an object, got {'empty text' if isinstance(item, str) else type(item).__name__}"
    )
