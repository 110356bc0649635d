"""Fault injection: a seam for tests to make the engine fail where real runs fail.

Set ``LORA_STUDIO_FAULTS`` to a comma-separated list such as ``oom@3,nan@2,checkpoint_pause@4:30``
(kind @ step [: seconds]) — or pass the same string to the engine — to raise an out-of-memory
error, produce a NaN loss, or pause inside a checkpoint write at that step. ``load_error`` and
``data_error`` raise what a library would raise while loading the model or tokenizing the data.
Exports understand ``export_fail@N`` (an I/O error part-way through the N-th file or folder
written, counting from 1) and ``low_disk`` (free space reported as a tenth of what the export
needs). Chat understands ``generate_error@N`` (the N-th answer of one loaded model fails inside
``generate``). ``write_pause@N:S`` holds the N-th file or folder written by this process (``@0``:
every one) for S seconds after its content is on disk and before it is renamed into place — the
moment a kill tests that saves are atomic (the seam is ``core/atomic.pause_before_rename``).
``step_pause@N:S`` holds the run for S seconds once step N's metrics line is on disk and its event
sent, ending early when the run is asked to stop or pause, so a test can kill, stop or pause it at
exactly that step however fast the machine trains. ``sample_pause@N:S`` holds likewise once the N-th
token of the first sample answer before training is reported (a test stops or pauses the run while
it is still writing its samples).

Every pause first prints one ``LORA_STUDIO_FAULTS: <kind> holding …`` line to stderr (flushed): a
test waits for that line, not for a guessed number of seconds, before it acts. Unset in normal use,
where every check is one dict lookup.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

KINDS = (
    "oom",
    "nan",
    "error",
    "checkpoint_pause",
    "disk_full",
    "load_error",
    "data_error",
    "export_fail",
    "low_disk",
    "generate_error",
    "write_pause",
    "step_pause",
    "sample_pause",
)

#: The start of the line every pause prints to stderr before it holds.
HOLDING = "LORA_STUDIO_FAULTS: "


@dataclass(frozen=True)
class Fault:
    kind: str
    step: int
    seconds: float = 0.0


#: What ``train``, ``resume``, ``export`` and chat take as ``faults=``: the spec text, faults already
#: parsed, or None (then ``LORA_STUDIO_FAULTS`` decides — unset in normal use).
FaultSpec: TypeAlias = "str | Mapping[str, Fault] | None"


def parse_faults(spec: FaultSpec = None) -> dict[str, Fault]:
    """The faults to inject, by kind; raises ValueError naming an unknown kind."""
    if isinstance(spec, Mapping):
        return dict(spec)
    spec = os.environ.get("LORA_STUDIO_FAULTS", "") if spec is None else spec
    faults: dict[str, Fault] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, rest = item.partition("@")
        step_text, _, seconds = rest.partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown fault '{kind}' (known: {', '.join(KINDS)})")
        faults[kind] = Fault(kind, int(step_text or 0), float(seconds or 0))
    return faults


def due(faults: dict[str, Fault], kind: str, step: int) -> Fault | None:
    fault = faults.get(kind)
    return fault if fault is not None and fault.step == step else None


def hold(fault: Fault, where: str, until: Callable[[], bool] | None = None) -> None:
    """Announce on stderr that ``fault`` holds the process ``where``, then sleep ``fault.seconds``.

    The announcement is what makes a pause usable without timing: the test sees the line and knows
    the process sits at this exact point until the time is up (or until ``until()`` turns true,
    checked every 50 ms — how a stop or pause asked during the hold still takes effect at once).
    """
    print(f"{HOLDING}{fault.kind} holding {where} for {fault.seconds:g} s", file=sys.stderr, flush=True)
    deadline = time.monotonic() + fault.seconds
    while (left := deadline - time.monotonic()) > 0:
        if until is not None and until():
            return
        time.sleep(min(left, 0.05))
