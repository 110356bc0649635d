"""How long an evaluation has left, from what its own stages have taken so far.

An evaluation is loads of models, and per model a loss pass over the examples and (when answers
are compared) a generation pass. The two passes cost very different amounts per example, a load
costs the same whatever the eval set, and the first batch of a pass carries one-off work
(allocations, caches, the first generation's warm-up) — so a share of the progress bar divided by
the time since Evaluate (load included) promised minutes for work that took seconds. Here each
pass's rate is measured per example between its own reports, after its first batch; what is left
is the rest of the current pass plus every pass and load still to come, at the rates measured.
Until a pass that is still to come has been timed once, there is no estimate: no number beats a
wrong one. Plain values in, so a test feeds it made-up times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Stages that work through the examples, and the pass whose rate each one shares.
PASSES = {"loss": "loss", "reference": "loss", "generating": "generating"}


@dataclass
class _Rate:
    seconds: float = 0.0  # after each pass's first batch
    examples: int = 0
    first: float | None = None  # seconds per example of a pass done in one batch (warm-up included)

    def per_example(self) -> float | None:
        return self.seconds / self.examples if self.examples else self.first


@dataclass
class TimeLeft:
    """Feed it every progress event with the time it arrived; :meth:`seconds` is what is left, or
    None while something still to come has never been timed.

    ``models``: models evaluated; ``loads``: distinct models loaded (a base compared with its
    fine-tune is one load; default one per model); ``examples``: examples each pass reads;
    ``generates``: whether answers are generated (a task metric) or only the loss is measured.
    """

    models: int
    examples: int
    generates: bool = True
    loads: int | None = None
    _rates: dict[str, _Rate] = field(default_factory=dict, init=False)
    _totals: dict[str, int] = field(default_factory=dict, init=False)
    _event: Any = field(default=None, init=False)
    _now: float = field(default=0.0, init=False)
    _started: float = field(
        default=0.0, init=False
    )  # when the current stage began: the previous event's arrival
    _after_load: bool = field(
        default=False, init=False
    )  # the current stage began right after a load (its first batch is the load's)
    _last: tuple[float, int] | None = field(
        default=None, init=False
    )  # the current pass's latest report: time, done
    _load_seconds: float | None = field(
        default=None, init=False
    )  # a load, up to the first report of the pass after it
    _loads_seen: int = field(default=0, init=False)
    _models_seen: set[int] = field(default_factory=set, init=False)

    def update(self, event: Any, now: float) -> None:
        """One :class:`EvalProgress` (stage, done, total, model_index) that arrived at ``now`` seconds."""
        previous = self._event
        if previous is None or (event.stage, event.model_index) != (previous.stage, previous.model_index):
            if previous is not None and previous.stage == "loading model":
                self._load_seconds = now - self._started
            self._started = self._now if previous is not None else now
            self._after_load = previous is None or previous.stage == "loading model"
            self._last = None
            if event.stage == "loading model":
                self._loads_seen += 1
                self._started = now
        if event.stage != "comparing" and event.stage != "saving":
            self._models_seen.add(event.model_index)
        kind = PASSES.get(event.stage)
        if kind is not None:
            self._totals[kind] = event.total
            rate = self._rates.setdefault(kind, _Rate())
            if self._last is None:
                # a whole pass in one batch has no other measure; a longer pass waits for its second
                if event.done and event.done >= event.total and not self._after_load:
                    rate.first = (now - self._started) / event.done
            elif event.done > self._last[1]:
                rate.seconds += now - self._last[0]
                rate.examples += event.done - self._last[1]
            self._last = (now, event.done)
        self._event, self._now = event, now

    def _pass(self, kind: str, examples: int | None = None) -> float | None:
        """Seconds for ``examples`` of a pass (default: the whole pass), None if never timed."""
        count = self._totals.get(kind, self.examples) if examples is None else examples
        rate = self._rates.get(kind)
        per_example = rate.per_example() if rate is not None else None
        if count <= 0:
            return 0.0
        return None if per_example is None else per_example * count

    def seconds(self, now: float | None = None) -> float | None:
        """Seconds left at ``now`` (default: the latest event's arrival); None when not known yet."""
        event = self._event
        if event is None:
            return None
        if event.stage in ("comparing", "saving"):
            return 0.0
        now = self._now if now is None else now
        passes = ["loss", "generating"] if self.generates else ["loss"]
        kind = PASSES.get(event.stage)
        parts: list[float | None] = []
        if kind is not None:  # the rest of this pass, counting down between its reports
            rest = self._pass(kind, event.total - event.done)
            since = now - (self._last[0] if self._last is not None else now)
            parts.append(None if rest is None else max(0.0, rest - since))
            later = passes[passes.index(kind) + 1 :] if event.stage != "reference" else []
        elif event.stage == "loading model":  # the rest of this load, then every pass of its model
            load = self._load_seconds
            parts.append(None if load is None else max(0.0, load - (now - self._started)))
            later = passes
        else:  # scoring: this model's passes are done
            later = []
        waiting = max(0, self.models - len(self._models_seen))
        parts += [self._pass(k) for k in later]
        parts += [None if (each := self._pass(k)) is None else each * waiting for k in passes if waiting]
        loads_left = max(0, (self.loads or self.models) - self._loads_seen)
        if loads_left:
            parts.append(None if self._load_seconds is None else self._load_seconds * loads_left)
        if any(p is None for p in parts):
            return None
        return float(sum(p for p in parts if p is not None))
