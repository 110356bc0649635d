"""Built-in catalogs of popular models and GPUs, for estimates without the model or the card.

A user asks "does Llama-3.1-8B fit my 12 GB card?" before downloading 16 GB of weights, so the
estimator accepts ``catalog:<name>`` models (architecture fields copied from real ``config.json``
files, with their source) and GPU names. Both catalogs are JSON under ``resources/catalog/`` so
adding an entry needs no code (CONTRIBUTING.md says how).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lora_studio.core.errors import ConfigError, ModelSourceError
from lora_studio.core.paths import resource_path

GIB = 2**30
CATALOG_PREFIX = "catalog:"


@dataclass(frozen=True)
class GPU:
    """A graphics card: its memory (GiB as nvidia-smi counts it) and whether it computes in bf16."""

    name: str
    memory_gib: float
    bf16: bool = True
    kind: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


@dataclass(frozen=True)
class CatalogModel:
    """A popular model's architecture fields (a ``config.json`` subset) and where they were copied from."""

    name: str
    hub_id: str
    source: str
    config: dict[str, Any] = field(hash=False, compare=False)
    aliases: tuple[str, ...] = ()
    notes: str = ""


@cache
def load_gpu_catalog() -> list[GPU]:
    """Every GPU in ``resources/catalog/gpus.json``, in file order."""
    data = _read("gpus.json")
    return [
        GPU(
            name=item["name"],
            memory_gib=float(item["memory_gib"]),
            bf16=bool(item.get("bf16", True)),
            kind=item.get("kind", ""),
            aliases=tuple(item.get("aliases", ())),
        )
        for item in data["gpus"]
    ]


@cache
def load_model_catalog() -> list[CatalogModel]:
    """Every model in ``resources/catalog/models.json``, in file order."""
    data = _read("models.json")
    return [
        CatalogModel(
            name=item["name"],
            hub_id=item.get("hub_id", ""),
            source=item["source"],
            config=dict(item["config"]),
            aliases=tuple(item.get("aliases", ())),
            notes=item.get("notes", ""),
        )
        for item in data["models"]
    ]


def _read(name: str) -> dict[str, Any]:
    path = resource_path("catalog", name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(
            f"{path}: the built-in catalog cannot be read ({exc})", hint="reinstall LoRA Studio"
        ) from None


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def find_gpu(name: str) -> GPU:
    """A GPU by name or alias, ignoring case, spaces and dashes ('rtx3060' finds 'RTX 3060')."""
    wanted = _key(name)
    for gpu in load_gpu_catalog():
        if wanted in {_key(gpu.name), *(_key(a) for a in gpu.aliases)}:
            return gpu
    names = ", ".join(g.name for g in load_gpu_catalog())
    raise ConfigError({"gpu": f"unknown GPU '{name}'; choose one of: {names} (or give the memory in GB)"})


def find_catalog_model(name: str) -> CatalogModel:
    """A catalog model by name, alias or hub id (``catalog:`` prefix optional), ignoring case."""
    wanted = _key(name.removeprefix(CATALOG_PREFIX))
    for model in load_model_catalog():
        if wanted in {_key(model.name), _key(model.hub_id), *(_key(a) for a in model.aliases)}:
            return model
    names = ", ".join(m.name for m in load_model_catalog())
    raise ModelSourceError(
        f"unknown catalog model '{name.removeprefix(CATALOG_PREFIX)}'",
        hint=f"choose one of: {names}",
    )


def catalog_config(model: CatalogModel) -> Any:
    """A ``transformers`` config built from the catalog fields (no files, no network)."""
    from transformers import AutoConfig

    fields = dict(model.config)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)
