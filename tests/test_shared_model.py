"""The paused run's model, lent to chat: what a run lends it takes back, and nothing else."""

import threading

from lora_studio.core.train import SharedModel


def test_a_run_takes_back_only_its_own_model():
    shared = SharedModel()
    assert not shared.loaded
    first, second, lock = object(), object(), threading.Lock()
    shared.lend(first, "tokenizer", lock)
    snapshot = shared.snapshot()
    shared.lend(second, "tokenizer 2", lock)  # a newer run lent its own model since
    shared.take_back(first)
    assert shared.model is second and shared.loaded
    shared.take_back(second)
    assert not shared.loaded and shared.tokenizer is None
    assert snapshot.model is first and snapshot.lock is lock  # a worker's copy is unaffected
