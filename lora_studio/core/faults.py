"""Fault injection: a seam for tests to make the engine fail where real runs fail.

Set ``LORA_STUDIO_FAULTS`` to a comma-separated list such as ``oom@3,nan@2,checkpoint_pause@4:30``
(kind @ step [: seconds]) — or pass the same string to the engine — to raise an out-of-memory
error, produce a NaN loss, or pause inside a checkpoint write at that step. Exports understand
``export_fail@N`` (an I/O error part-way through the N-th file or folder written, counting from 1)
and ``low_disk`` (free space reported as a tenth of what the export needs). Unset in normal use,
where every check is one dict lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
)


@dataclass(frozen=True)
class Fault:
    kind: str
    step: int
    seconds: float = 0.0


def parse_faults(spec: str | None = None) -> dict[str, Fault]:
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
