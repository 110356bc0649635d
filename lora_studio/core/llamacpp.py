"""llama.cpp itself, when it is installed: the runtime people use, as the judge of our GGUF files.

llama-cpp-python is an optional extra (``pip install 'lora-studio[llamacpp]'``, compiled from
source). Everything here runs llama.cpp in a child process (``python -m
lora_studio.core.llamacpp``): a llama.cpp built for CPU features this machine lacks dies
with SIGILL (a native build on a CPU that advertises AMX did, on a known-good file), and that must
end one check with a clear message, never the app. The child reads one JSON request on stdin and
writes one JSON answer (and, for logits, an ``.npy`` file) — no torch, so it starts in a second.

``LORA_STUDIO_LLAMA_CPP=off`` hides llama.cpp (the transformers checks run instead).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INSTALL_HINT = (
    'install the llama.cpp verifier: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" '
    "pip install 'lora-studio[llamacpp]' (compiles llama.cpp; a few minutes)"
)
_REBUILD_HINT = (
    'rebuild it for this CPU\'s common features: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON" '
    "pip install --force-reinstall --no-cache-dir llama-cpp-python"
)


class LlamaCppError(RuntimeError):
    """llama.cpp could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class LlamaCppStatus:
    """Whether the llama.cpp verifier can be used, and if not, why and what to do."""

    installed: bool
    working: bool
    version: str = ""
    detail: str = ""  # the system info line, or the problem

    def line(self) -> str:
        if not self.installed:
            if self.detail == "turned off":
                return "turned off (LORA_STUDIO_LLAMA_CPP=off)"
            return f"not installed — {INSTALL_HINT}"
        if not self.working:
            return f"llama-cpp-python {self.version} is installed but does not work: {self.detail}"
        return f"llama-cpp-python {self.version} (llama.cpp), working"


@dataclass
class Evaluation:
    """What llama.cpp made of a GGUF file: logits on the probe, a greedy continuation, its renderings."""

    logits: Any  # numpy (positions × vocab), float32
    greedy: list[int]
    tokens: list[int]  # llama.cpp's tokenization of the test string
    template: str | None  # the chat rendered by llama.cpp's own template code
    template_problem: str | None = None


def disabled() -> bool:
    return os.environ.get("LORA_STUDIO_LLAMA_CPP", "").strip().lower() in ("0", "off", "no", "false")


def installed() -> bool:
    return not disabled() and importlib.util.find_spec("llama_cpp") is not None


def status(model: str | None = None) -> LlamaCppStatus:
    """Import llama.cpp in a child process (and load ``model`` if given): does it work on this CPU?

    Asked once per process and model (a child process costs a second); the answer for a turned-off
    or missing llama.cpp is never cached, so turning it off takes effect at once.
    """
    if not installed():
        return LlamaCppStatus(False, False, detail="turned off" if disabled() else "not installed")
    return _probe(model)


def fallback_note(state: LlamaCppStatus) -> str:
    """Why transformers checked a GGUF instead of llama.cpp, for the report's method line."""
    return f"llama.cpp verifier {state.detail if not state.installed else 'not working: ' + state.detail}"


@functools.lru_cache(maxsize=4)
def _probe(model: str | None) -> LlamaCppStatus:
    try:
        answer = _run_child({"op": "probe", "model": model}, timeout=120)
    except LlamaCppError as exc:
        return LlamaCppStatus(True, False, detail=str(exc))
    return LlamaCppStatus(True, True, answer.get("version", "?"), answer.get("system_info", ""))


def evaluate(
    model: Path,
    ids: list[int],
    *,
    lora: Path | None = None,
    greedy: int = 0,
    text: str = "",
    messages: list[dict[str, str]] | None = None,
    timeout: float = 600,
) -> Evaluation:
    """Load ``model`` (and ``lora``) in llama.cpp; logits at every position of ``ids``, then
    ``greedy`` more tokens by argmax, the tokens of ``text``, and ``messages`` through its template."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="lora-studio-llamacpp-") as tmp:
        out = Path(tmp) / "logits.npy"
        answer = _run_child(
            {
                "op": "evaluate",
                "model": str(model),
                "lora": str(lora) if lora else None,
                "ids": list(map(int, ids)),
                "greedy": greedy,
                "text": text,
                "messages": messages or [],
                "logits_out": str(out),
            },
            timeout=timeout,
        )
        logits = np.load(out)
    return Evaluation(
        logits=logits,
        greedy=answer["greedy"],
        tokens=answer["tokens"],
        template=answer.get("template"),
        template_problem=answer.get("template_problem"),
    )


def quantize(source: Path, target: Path, ftype: int, *, timeout: float = 3600) -> None:
    """``llama-quantize source target ftype``: llama.cpp's own quantizer, for tests and benchmarks."""
    _run_child(
        {"op": "quantize", "input": str(source), "output": str(target), "ftype": ftype}, timeout=timeout
    )


# -- the parent's side of the child -------------------------------------------------------------


def _run_child(request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lora_studio.core.llamacpp"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise LlamaCppError(f"llama.cpp did not finish within {timeout:.0f} s") from None
    if done.returncode < 0:
        raise LlamaCppError(_signal_text(-done.returncode))
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise LlamaCppError(
            f"llama.cpp exited with status {done.returncode}: {' '.join(tail) or 'no output'}"
        ) from None
    if "error" in answer:
        raise LlamaCppError(answer["error"])
    return answer


def _signal_text(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGILL:
        return (
            "llama.cpp crashed with SIGILL (illegal instruction): it was built for CPU features this "
            f"machine lacks (a native build, e.g. with AMX); {_REBUILD_HINT}"
        )
    return f"llama.cpp crashed ({name})"


# -- the child ----------------------------------------------------------------------------------


def _child_main() -> None:  # pragma: no cover - runs in the child process; its results are tested
    request = json.loads(sys.stdin.read())
    try:
        answer = _CHILD_OPS[request["op"]](request)
    except Exception as exc:  # the parent turns this into a LlamaCppError with the message
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    sys.stdout.flush()


def _quiet() -> None:  # pragma: no cover - child
    """llama.cpp logs to stderr through a callback; silence it (the parent reads stdout only)."""
    import llama_cpp

    @llama_cpp.llama_log_callback
    def _ignore(level: int, text: bytes, user_data: Any) -> None:
        return None

    llama_cpp.llama_log_set(_ignore, None)
    globals()["_log_callback"] = _ignore  # keep the callback alive


def _child_probe(request: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - child
    import llama_cpp

    _quiet()
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    answer = {"version": llama_cpp.__version__, "system_info": info}
    if request.get("model"):
        llm = llama_cpp.Llama(request["model"], n_ctx=64, n_threads=_threads(), verbose=False)
        llm.eval(llm.tokenize(b"Hello", add_bos=True))  # a forward pass: a bad kernel dies here
        llm.close()
    return answer


def _threads() -> int:  # pragma: no cover - child
    return max(1, min(8, os.cpu_count() or 1))


def _evaluate(request: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - child
    import ctypes

    import llama_cpp
    import numpy as np

    _quiet()
    ids = request["ids"]
    n_ctx = max(64, len(ids) + int(request["greedy"]) + 8)
    llm = llama_cpp.Llama(
        request["model"],
        n_ctx=n_ctx,
        n_batch=max(64, len(ids)),
        logits_all=True,
        lora_path=request.get("lora"),
        n_threads=_threads(),
        verbose=False,
    )
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    greedy = []
    for _ in range(int(request["greedy"])):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(token)
        llm.eval([token])
    tokens = (
        llm.tokenize(request["text"].encode("utf-8"), add_bos=False, special=True) if request["text"] else []
    )
    template = problem = None
    messages = request.get("messages") or []
    if messages:
        tmpl = llama_cpp.llama_model_chat_template(llm._model.model, None)
        if not tmpl:
            problem = "the file has no chat template"
        else:
            chat = (llama_cpp.llama_chat_message * len(messages))()
            keep = []
            for i, message in enumerate(messages):
                role, content = message["role"].encode(), message["content"].encode()
                keep += [role, content]
                chat[i].role, chat[i].content = role, content
            size = n = 16384
            while n >= size:  # it returns the length it needs: a longer chat gets a bigger buffer
                size = max(size, n + 1)
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_chat_apply_template(tmpl, chat, len(messages), True, buf, size)
            if n < 0:
                problem = (
                    "llama.cpp does not recognise this chat template (it renders only the templates it knows)"
                )
            else:
                template = buf.raw[:n].decode("utf-8", "replace")
    np.save(request["logits_out"], logits)
    llm.close()
    return {
        "greedy": greedy,
        "tokens": list(map(int, tokens)),
        "template": template,
        "template_problem": problem,
    }


def _quantize(request: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover - child
    import ctypes

    import llama_cpp

    _quiet()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(request["ftype"])
    params.nthread = _threads()
    code = llama_cpp.llama_model_quantize(
        request["input"].encode("utf-8"), request["output"].encode("utf-8"), ctypes.byref(params)
    )
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code}")
    return {"ok": True}


_CHILD_OPS = {"probe": _child_probe, "evaluate": _evaluate, "quantize": _quantize}

if __name__ == "__main__":  # pragma: no cover
    _child_main()
