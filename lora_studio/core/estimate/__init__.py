"""Estimate: how much GPU memory a run needs before anything loads, and what to change if it won't fit.

``model`` reads a model's shape from its config alone (built on the meta device); ``request``
validates what the user chose and resolves it into the engine's ``Plan``; ``terms`` and
``analytic`` turn a plan into bytes per component; ``explain`` words each component and
``advice`` (``estimate_memory``) adds the verdict and the changes that make a run fit. ``precise``
simulates one training step with fake tensors for an exact peak (``preference`` the step of DPO, KTO,
ORPO and SimPO as TRL's trainers take it); ``savers`` decides the "auto" memory savers (for the
estimate, and for the engine through its callers); ``catalog`` lists GPUs and popular models. Depends on ``train`` (its memory savers decide the sizes) and the base.
"""

from lora_studio.core.estimate.advice import advise, estimate_memory
from lora_studio.core.estimate.analytic import estimate_plan
from lora_studio.core.estimate.catalog import (
    GPU,
    CatalogModel,
    catalog_config,
    find_catalog_model,
    find_gpu,
    load_gpu_catalog,
    load_model_catalog,
)
from lora_studio.core.estimate.explain import explain
from lora_studio.core.estimate.model import ModelShape, model_shape
from lora_studio.core.estimate.precise import CATEGORIES, PreciseEstimate, estimate_precise, simulate_step
from lora_studio.core.estimate.request import (
    ALLOCATOR_SLACK,
    COMPUTE_DTYPES,
    CUDA_CONTEXT_BYTES,
    DEVICES,
    GIB,
    METHOD_NAMES,
    METHODS,
    OPTIMIZERS,
    QUANTIZATIONS,
    EstimateRequest,
    MemoryEstimate,
    Plan,
    gb,
)
from lora_studio.core.estimate.savers import decide_savers, plan_for

__all__ = [
    "ALLOCATOR_SLACK",
    "CATEGORIES",
    "COMPUTE_DTYPES",
    "CUDA_CONTEXT_BYTES",
    "DEVICES",
    "GIB",
    "GPU",
    "METHODS",
    "METHOD_NAMES",
    "OPTIMIZERS",
    "QUANTIZATIONS",
    "CatalogModel",
    "EstimateRequest",
    "MemoryEstimate",
    "ModelShape",
    "Plan",
    "PreciseEstimate",
    "advise",
    "catalog_config",
    "decide_savers",
    "estimate_memory",
    "estimate_plan",
    "estimate_precise",
    "explain",
    "find_catalog_model",
    "find_gpu",
    "gb",
    "load_gpu_catalog",
    "load_model_catalog",
    "model_shape",
    "plan_for",
    "simulate_step",
]
