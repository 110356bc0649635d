"""Which memory savers a run uses: "auto" settings decided by the estimate.

Why here: "auto" means "on only when the run would not fit without it", a question for the
estimate, while the savers themselves live with the engine (``train.long_context``). The engine
sits below the estimate (``lora_studio/core/__init__.py``), so it does not import this module: its
callers (the CLI's ``train``, the app's training worker) hand it :func:`decide_savers`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lora_studio.core.estimate.analytic import estimate_plan
from lora_studio.core.estimate.request import (
    SAVER_NAMES,
    SAVERS,
    EstimateRequest,
    Plan,
    _saver_applies,
    base_plan,
    saver_setting,
    with_savers,
)
from lora_studio.core.train.long_context import Savers, device_memory, fixed_savers

if TYPE_CHECKING:
    from lora_studio.core.config import RunConfig


def plan_for(req: EstimateRequest) -> Plan:
    """Validate a request and resolve what the engine would do, "auto" savers decided for the
    request's device memory (raises ConfigError / ModelSourceError)."""
    plan, settings = base_plan(req)
    return resolve_savers(plan, settings, req.vram_bytes)


def resolve_savers(plan: Plan, settings: dict[str, str], device_bytes: int | None) -> Plan:
    """The plan with each "auto" saver decided: turned on, in ``SAVERS`` order, only while the
    estimate of ``plan`` does not fit ``device_bytes`` (unknown device memory: all off)."""
    plan = with_savers(plan, [name for name in SAVERS if settings[name] == "on"])
    auto = [name for name in SAVERS if settings[name] == "auto" and _saver_applies(plan, name)]
    plan = replace(
        plan,
        auto_allowed=tuple(auto),
        auto_settings=tuple(name for name in SAVERS if settings[name] == "auto"),
    )
    if not auto or device_bytes is None:
        return plan
    turned: list[str] = []
    for name in auto:
        if estimate_plan(plan).total_bytes <= device_bytes:
            break
        plan = with_savers(plan, [name])
        turned.append(name)
    return replace(plan, auto_savers=tuple(turned))


def decide_savers(config: RunConfig, device: str) -> tuple[Savers, str]:
    """The savers a run uses on ``device``, and a line saying which and why.

    "on"/"off" are followed as set; "auto" asks the memory estimate (the same arithmetic the
    memory panel shows) whether the run fits this device without the saver and turns savers on,
    cheapest first, only until it does. When the estimate cannot be made (an architecture the
    estimator does not know), "auto" stays off and the line says so.
    """
    t = config.training
    settings = {name: saver_setting(getattr(t, name), f"training.{name}") for name in SAVERS}
    auto = "auto" in settings.values()
    try:
        memory = device_memory(device) if auto else None
        plan = plan_for(EstimateRequest.from_config(config, device=device, vram_bytes=memory))
    except Exception as exc:
        savers, line = fixed_savers(config, device)
        return savers, line + (f" ('auto' left off: the memory estimate failed ({exc}))" if auto else "")
    fixed = {name: bool(getattr(plan, name)) for name in SAVERS}
    forced = [SAVER_NAMES[n] for n in SAVERS if settings[n] == "on" and fixed[n]]
    reasons = [f"{', '.join(forced)} set to on"] if forced else []
    if plan.auto_savers:
        turned = ", ".join(SAVER_NAMES[n] for n in plan.auto_savers)
        reasons.append(f"'auto' turned on {turned}: the run would not fit this device's memory without")
    elif plan.auto_allowed:
        others = "the others" if forced else "them"
        reasons.append(f"'auto' left {others} off: the run fits this device's memory")
    savers = Savers(
        tiled_mlp=fixed["tiled_mlp"],
        norm_recompute=fixed["norm_recompute"],
        offload=fixed["checkpoint_offload"] and t.gradient_checkpointing and device.startswith("cuda"),
        chunked_attention=fixed["chunked_attention"],
    )
    names = savers.names()
    return savers, (", ".join(names) if names else "none") + (f" ({'; '.join(reasons)})" if reasons else "")
