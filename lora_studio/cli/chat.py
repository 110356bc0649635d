"""``lora-studio chat``: one answer, a base-vs-fine-tuned comparison, a prompt set, or a loop.

In the interactive loop Ctrl-C stops the answer being written, not the program; Ctrl-C or Ctrl-D
at the prompt quits. ``--prompt-set`` answers a list of prompts with the base model and the
fine-tune (greedy unless ``--no-greedy``) and prints the table as Markdown; Ctrl-C stops it and
prints what was answered so far.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from lora_studio.core.errors import LoraStudioError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("chat", help="talk to a model, with or without a fine-tuned adapter")
    parser.add_argument(
        "--model", default="default", help="base model: 'default', a folder, a .gguf or a hub id"
    )
    parser.add_argument("--adapter", help="a run folder, one of its checkpoints, or a PEFT adapter folder")
    parser.add_argument(
        "--quant",
        choices=["none", "int8", "nf4", "fp4"],
        default="none",
        help="load the base model quantized (less memory, slower on CPU)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="answer with the base model and the fine-tuned model, labelled"
    )
    parser.add_argument("--prompt", help="answer this one prompt and exit (else an interactive loop)")
    parser.add_argument(
        "--prompt-set",
        metavar="FILE_OR_NAME",
        help="answer every prompt of a saved set (by name), a .txt file (one prompt per line), a .jsonl "
        "or .json file, or 'samples' (the run's sample prompts), with the base model and the fine-tune; "
        "prints a Markdown table",
    )
    parser.add_argument("--markdown", metavar="OUT.md", help="with --prompt-set: also write the table here")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--greedy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic answers, ignoring the sampling settings (the default with --prompt-set)",
    )
    parser.add_argument("--json", action="store_true", help="print the answers as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lora_studio.core.chat import ChatError, ChatModel, Sampling

    sampling = Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy if args.greedy is not None else bool(args.prompt_set),
    )
    sampling.check()
    if args.compare and not args.adapter:
        raise ChatError("--compare needs --adapter", hint="give a run folder or an adapter folder")
    if args.markdown and not args.prompt_set:
        raise ChatError("--markdown needs --prompt-set", hint="give a prompt set file or name")
    if args.prompt_set and args.prompt is not None:
        raise ChatError("--prompt and --prompt-set cannot be used together", hint="choose one")
    prompt_set = _prompt_set(args) if args.prompt_set else None  # a bad set fails before the slow load
    if not args.json:
        print(
            f"Loading {args.model}" + (f" with adapter {args.adapter}" if args.adapter else "") + " ...",
            file=sys.stderr,
        )
    chat = ChatModel.load(args.model, adapter=args.adapter, quantization=args.quant)
    if prompt_set is not None:
        return _run_prompt_set(chat, prompt_set, sampling, args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        messages = [*system, {"role": "user", "content": args.prompt}]
        return _one_shot(chat, messages, sampling, args)
    return _interactive(chat, system, sampling, args)


def _prompt_set(args: argparse.Namespace) -> Any:
    from lora_studio.core.chat import find_prompt_set

    prompt_set = find_prompt_set(args.prompt_set, run=args.adapter)
    if args.system:
        prompt_set.system = args.system
    prompt_set.check()
    return prompt_set


def _run_prompt_set(chat: Any, prompt_set: Any, sampling: Any, args: argparse.Namespace) -> int:
    """Progress on stderr, one line per answer; the table on stdout (and in --markdown).

    Exit code 130 when Ctrl-C stopped it (the partial table is still printed and written)."""
    from lora_studio.core.chat import default_columns, run_prompt_set

    columns = default_columns(chat)
    cancel = threading.Event()

    def progress(cell: Any) -> None:
        if args.json:
            return
        if cell.reply is None:
            prompt = " ".join(prompt_set.prompts[cell.row].split())
            short = prompt if len(prompt) <= 50 else prompt[:49] + "…"
            label = columns[cell.column][0]
            print(f"[{cell.index}/{cell.total}] {label}: {short} …", end="", file=sys.stderr, flush=True)
        else:
            stopped = ", stopped" if cell.reply.stopped else ""
            print(f" {cell.reply.new_tokens} tokens, {cell.reply.seconds:.1f} s{stopped}", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        result = run_prompt_set(
            chat,
            prompt_set,
            sampling,
            columns=columns,
            cancel=cancel,
            on_cell=progress,
            model_name=args.model,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.markdown:
        path = result.write_markdown(args.markdown)
        if not args.json:
            print(f"Wrote {path}", file=sys.stderr)
    print(json.dumps(result.to_dict()) if args.json else result.to_markdown(), end="\n" if args.json else "")
    return 130 if result.stopped else 0


def _labels(args: argparse.Namespace) -> list[tuple[str, bool]]:
    if args.compare:
        return [("base", False), ("fine-tuned", True)]
    return [("fine-tuned" if args.adapter else "answer", True)]


def _one_shot(chat: Any, messages: list[dict[str, str]], sampling: Any, args: argparse.Namespace) -> int:
    results = {}
    for label, use_adapter in _labels(args):
        if args.json:
            reply = chat.answer(messages, sampling, use_adapter=use_adapter)
            results[label] = reply.to_dict()
            continue
        if args.compare:
            print(f"[{label}]")
        reply = chat.answer(
            messages, sampling, use_adapter=use_adapter, on_piece=lambda p: print(p, end="", flush=True)
        )
        print()
        _footer(reply)
    if args.json:
        print(json.dumps(results))
    return 0


def _footer(reply: Any) -> None:
    ttft = f", first token after {reply.first_token_s:.2f} s" if reply.first_token_s is not None else ""
    notes = "".join(f"; {n}" for n in reply.notes)
    print(f"  ({reply.new_tokens} tokens, {reply.tokens_per_s:.1f} tok/s{ttft}{notes})", file=sys.stderr)


def _interactive(chat: Any, system: list[dict[str, str]], sampling: Any, args: argparse.Namespace) -> int:
    history: list[dict[str, str]] = []
    print(
        "Type a message (Enter sends). Ctrl-C stops an answer; Ctrl-D or Ctrl-C at the prompt quits.",
        file=sys.stderr,
    )
    while True:
        try:
            text = input("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        answer = ""
        for label, use_adapter in _labels(args):
            cancel = threading.Event()
            previous = signal.signal(signal.SIGINT, lambda *_, c=cancel: c.set())
            try:
                print(f"{label}> ", end="", flush=True)
                reply = chat.answer(
                    [*system, *history],
                    sampling,
                    use_adapter=use_adapter,
                    cancel=cancel,
                    on_piece=lambda p: print(p, end="", flush=True),
                )
            except LoraStudioError as exc:
                print(f"\nerror: {exc}", file=sys.stderr)
                continue
            finally:
                signal.signal(signal.SIGINT, previous)
            print()
            _footer(reply)
            answer = reply.text
        history.append({"role": "assistant", "content": answer})
