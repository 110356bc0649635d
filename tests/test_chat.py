"""Chat core on the tiny model: streaming, stop, adapters, base-vs-tuned on one model."""

import json
import subprocess
import sys
import threading

import pytest

from lora_studio.core.chat import ChatError, ChatModel, Sampling, resolve_adapter

GREEDY = Sampling(greedy=True, max_new_tokens=12, repetition_penalty=1.0)
ASK = [{"role": "user", "content": "What is your name?"}]


@pytest.fixture(scope="module")
def chat(tiny_model_dir):
    return ChatModel.load(str(tiny_model_dir), dtype="fp32")


def save_adapter(model_dir, out, *, zero: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=zero),
    )
    peft_model.save_pretrained(out)
    return out


def test_streaming_equals_plain_greedy_generation(chat):
    import torch

    pieces = []
    reply = chat.answer(ASK, GREEDY, on_piece=pieces.append)
    assert "".join(pieces).strip() == reply.text
    ids, _ = chat.render(ASK)
    with torch.no_grad():
        out = chat.model.generate(
            torch.tensor([ids]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=chat.stop_ids,
            pad_token_id=chat.tokenizer.pad_token_id,
        )
    expected = chat.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True).strip()
    assert reply.text == expected
    assert reply.new_tokens >= 1 and reply.first_token_s is not None


def test_stop_ends_within_a_step(chat):
    cancel = threading.Event()
    seen = []

    def on_piece(piece):
        seen.append(piece)
        cancel.set()

    reply = chat.answer(ASK, Sampling(greedy=True, max_new_tokens=200), cancel=cancel, on_piece=on_piece)
    assert reply.stopped
    assert reply.new_tokens <= 4


def test_zero_initialised_adapter_answers_like_the_base(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "zero", zero=True)
    chat = ChatModel.load(str(tiny_model_dir), adapter=adapter, dtype="fp32")
    base, tuned = chat.compare(ASK, GREEDY)
    assert base.text == tuned.text


def test_trained_adapter_changes_answers_but_base_comes_from_the_same_model(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "random", zero=False)
    plain = ChatModel.load(str(tiny_model_dir), dtype="fp32").answer(ASK, GREEDY).text
    chat = ChatModel.load(str(tiny_model_dir), adapter=adapter, dtype="fp32")
    base, tuned = chat.compare(ASK, GREEDY)
    assert base.text == plain
    assert tuned.text != base.text


def test_adapter_for_a_different_base_is_refused_clearly(tiny_model_dir, default_model_dir, tmp_path):
    from conftest import make_tiny_model

    other = make_tiny_model(tmp_path / "wide", default_model_dir, hidden=32, intermediate=64)
    adapter = save_adapter(other, tmp_path / "wide-adapter", zero=True)
    chat = ChatModel.load(str(tiny_model_dir), dtype="fp32")
    with pytest.raises(ChatError, match="different base model"):
        chat.attach_adapter(adapter)
    assert chat.answer(ASK, GREEDY).new_tokens >= 1  # still loaded and usable


def test_missing_and_corrupt_adapters(tmp_path, chat):
    with pytest.raises(ChatError, match="no such adapter"):
        resolve_adapter(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatError, match="no adapter_config.json"):
        resolve_adapter(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ChatError, match="corrupt adapter"):
        chat.attach_adapter(broken)


def test_empty_prompt_and_bad_sampling(chat):
    with pytest.raises(ChatError, match="empty"):
        chat.answer([{"role": "user", "content": "   "}], GREEDY)
    with pytest.raises(ChatError, match="temperature"):
        chat.answer(ASK, Sampling(temperature=0))


def test_long_conversation_drops_the_oldest_turns(chat):
    chat_small = ChatModel(chat.model, chat.tokenizer, context_length=120)
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Question number {i} about something long"},
            {"role": "assistant", "content": f"Answer number {i} with some words"},
        ]
    messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "Last?"}]
    ids, dropped = chat_small.render(messages)
    assert dropped > 0 and len(ids) < 120
    text = chat_small.tokenizer.decode(ids)
    assert "Be brief." in text and "Last?" in text and "Question number 0 " not in text


def test_paused_training_model_is_shared_without_touching_gradients(tiny_model_dir):
    """Generation takes the lock, switches to eval and back to train, and leaves grads alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear")
    )
    model.train()
    lock = threading.Lock()
    chat = ChatModel(model, ChatModel.load(str(tiny_model_dir)).tokenizer, lock=lock)
    chat.answer(ASK, GREEDY)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    lock.acquire()
    done = threading.Event()
    threading.Thread(target=lambda: (chat.answer(ASK, GREEDY), done.set()), daemon=True).start()
    assert not done.wait(0.5)  # waits for the lock (training step in progress)
    lock.release()
    assert done.wait(60)


def test_cli_compare_labels_both_answers(tiny_model_dir, tmp_path):
    adapter = save_adapter(tiny_model_dir, tmp_path / "random", zero=False)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_studio",
            "chat",
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(adapter),
            "--compare",
            "--prompt",
            "What is your name?",
            "--greedy",
            "--max-new-tokens",
            "6",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert set(answers) == {"base", "fine-tuned"}
    assert answers["base"]["text"] != answers["fine-tuned"]["text"]


def test_cli_compare_without_adapter_is_one_clear_line(tiny_model_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_studio",
            "chat",
            "--model",
            str(tiny_model_dir),
            "--compare",
            "--prompt",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --compare needs --adapter")


@pytest.mark.slow
def test_default_model_stops_at_the_end_of_its_turn():
    chat = ChatModel.load("default")
    reply = chat.answer(
        [{"role": "user", "content": "What is the capital of France? One sentence."}],
        Sampling(greedy=True, max_new_tokens=120),
    )
    assert "Paris" in reply.text
    assert reply.new_tokens < 120
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
