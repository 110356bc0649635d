"""The model side of an evaluation: per-example loss on trained tokens, and batched greedy answers.

Models are loaded through :class:`lora_studio.core.chat.model.ChatModel`, so an adapter is checked
against its base exactly as in chat (a clear error for an adapter trained on another model), and
the base model's answers come from the same loaded weights with the adapter switched off. Both
passes take the model's lock and check ``cancel`` between batches (generation also between tokens).

Loss batches are right-padded and capped by a token budget, because the logits (batch x sequence x
vocabulary, in fp32) dominate memory; generation batches are left-padded, so every row's next token
is at the end, and sorted by prompt length to waste little compute on padding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lora_studio.core.data import IGNORE
from lora_studio.core.errors import CancelledError

if TYPE_CHECKING:
    from lora_studio.core.chat import ChatModel
    from lora_studio.core.data import Example

#: Most tokens in one loss batch (the fp32 logits of the default model: ~400 MB at 2048 tokens).
LOSS_TOKEN_BUDGET = 2048

Tick = Callable[[int, int], None]


def load_chat_model(
    source: str,
    *,
    adapter: str | None,
    quantization: str,
    compute_dtype: str,
    double_quant: bool,
    trust_remote_code: bool,
) -> ChatModel:
    """The model as it was trained (same quantization and dtype), with its adapter when given."""
    from lora_studio.core.chat import ChatModel

    return ChatModel.load(
        source,
        adapter=adapter,
        quantization=quantization,
        dtype=compute_dtype,
        double_quant=double_quant,
        trust_remote_code=trust_remote_code,
    )


@contextlib.contextmanager
def adapter_mode(chat: ChatModel, use_adapter: bool) -> Iterator[Any]:
    """Eval mode, no gradients, the lock held, and the adapter off when ``use_adapter`` is False."""
    import torch

    with chat.lock:
        model = chat.model
        was_training = model.training
        model.eval()
        switch = (
            model.disable_adapter() if (not use_adapter and chat.has_adapter) else contextlib.nullcontext()
        )
        try:
            with switch, torch.no_grad():
                yield model
        finally:
            model.train(was_training)


def token_losses(
    chat: ChatModel,
    examples: Sequence[Example | None],
    *,
    use_adapter: bool,
    batch_size: int,
    cancel: threading.Event,
    tick: Tick,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, trained token count) per example; (0, 0) for ``None``."""
    import torch

    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    order = sorted((i for i, e in enumerate(examples) if e is not None), key=lambda i: len(examples[i].ids))  # type: ignore[union-attr]
    pad_id = _pad_id(chat.tokenizer)
    done = 0
    with adapter_mode(chat, use_adapter) as model:
        device = model.device
        for batch in _batches(order, [len(examples[i].ids) for i in order], batch_size):  # type: ignore[union-attr]
            _check(cancel)
            rows = [examples[i] for i in batch]
            width = max(len(e.ids) for e in rows)  # type: ignore[union-attr]
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, e in enumerate(rows):
                n = len(e.ids)  # type: ignore[union-attr]
                ids[r, :n] = torch.tensor(e.ids)  # type: ignore[union-attr]
                labels[r, :n] = torch.tensor(e.labels)  # type: ignore[union-attr]
                mask[r, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            targets = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
            )
            counts = (targets != IGNORE).sum(dim=1)
            for r, i in enumerate(batch):
                results[i] = (float(nll[r].sum()), int(counts[r]))
            done += len(batch)
            tick(done, len(order))
    return results


def generate_answers(
    chat: ChatModel,
    prompts: Sequence[list[dict[str, str]] | None],
    *,
    use_adapter: bool,
    max_new_tokens: int,
    batch_size: int,
    cancel: threading.Event,
    tick: Tick,
) -> list[str | None]:
    """Greedy answers (no sampling, no repetition penalty), decoded without special tokens."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    answers: list[str | None] = [None] * len(prompts)
    rendered = {i: chat.render(p)[0] for i, p in enumerate(prompts) if p is not None}
    order = sorted(rendered, key=lambda i: len(rendered[i]))
    pad_id = _pad_id(chat.tokenizer)

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    done = 0
    with adapter_mode(chat, use_adapter) as model:
        for start in range(0, len(order), batch_size):
            _check(cancel)
            batch = order[start : start + batch_size]
            budget = max(1, min(max_new_tokens, chat.context_length - max(len(rendered[i]) for i in batch)))
            width = max(len(rendered[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                n = len(rendered[i])
                ids[r, width - n :] = torch.tensor(rendered[i])
                mask[r, width - n :] = 1
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=mask.to(model.device),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=chat.stop_ids,
                pad_token_id=pad_id,
                stopping_criteria=StoppingCriteriaList([_Cancel()]),
                use_cache=True,
            )
            _check(cancel)
            for r, i in enumerate(batch):
                new = out[r, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in chat.stop_ids), len(new))
                answers[i] = chat.tokenizer.decode(new[:cut], skip_special_tokens=True).strip()
            done += len(batch)
            tick(done, len(order))
    return answers


def reference_tokens(chat: ChatModel, references: Sequence[str]) -> int:
    """Length in tokens of the longest reference answer (sizes the generation budget)."""
    return max((len(chat.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0)


def _batches(order: list[int], lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` (sorted by length) with at most ``batch_size`` rows and
    ``LOSS_TOKEN_BUDGET`` padded tokens (a longer example goes alone)."""
    batch: list[int] = []
    for i, n in zip(order, lengths, strict=True):
        if batch and (len(batch) >= batch_size or n * (len(batch) + 1) > LOSS_TOKEN_BUDGET):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise CancelledError("Evaluation cancelled")
