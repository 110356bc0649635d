"""The model a run has loaded, lent to chat while the run is paused.

A paused run keeps its model in memory; loading a second copy to try it out would double the
memory a user's card may not have. The engine lends its model, tokenizer and step lock here once
the model is wrapped with LoRA and takes them back when the run ends; chat takes ``lock`` around
each answer — the lock a training step holds — so an answer and a step never run at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SharedModel:
    model: Any = None
    tokenizer: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def lend(self, model: Any, tokenizer: Any, lock: threading.Lock) -> None:
        self.model, self.tokenizer, self.lock = model, tokenizer, lock

    def take_back(self, model: Any) -> None:
        """Forget the model if it is still ``model`` (a newer run may have lent its own since)."""
        if self.model is model and model is not None:
            self.clear()

    def clear(self) -> None:
        self.model = self.tokenizer = None

    def snapshot(self) -> SharedModel:
        """A copy to hand to a worker: what is lent now, unaffected by a later ``clear``."""
        return SharedModel(self.model, self.tokenizer, self.lock)
