"""The memory panel: the live estimate for the current settings against a chosen GPU.

It recomputes (debounced, in a background task) whenever a setting that changes memory changes,
wherever it was edited — Model, Data or Train page — and publishes the result on the app state so
the Train page can draw it as the dashed "estimate" line next to the measured memory.

The exact memory savers (lean 4-bit preparation, chunked loss, checkpointing with offload, the
tiled MLP, recomputed norms) are edited right here, next to the bar they change: their effect is
only visible in the estimate. Offload, tiled MLP and norm recompute can be "auto" — on only when the
run would not fit otherwise — so under the bar the panel says which of them the estimate uses, and
whether "auto" turned them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QVBoxLayout, QWidget

from lora_studio.core.config import RunConfig
from lora_studio.gui import jobs
from lora_studio.gui.state import AppState
from lora_studio.gui.widgets.forms import FieldEditor, doc
from lora_studio.gui.widgets.memory_bar import MemoryBar, gb
from lora_studio.gui.workers import BackgroundTask

#: Settings whose change changes the estimate.
MEMORY_FIELDS = {
    "model.source", "model.quantization", "model.double_quant", "model.compute_dtype",
    "model.trust_remote_code", "lora.r", "lora.target_modules", "lora.use_dora", "lora.dropout",
    "training.batch_size", "training.grad_accum", "training.optimizer",
    "training.gradient_checkpointing", "data.max_seq_len", "data.packing",
    "model.lean_kbit_prep", "training.chunked_loss", "training.checkpoint_offload",
    "training.tiled_mlp", "training.norm_recompute", "training.chunked_attention",
    "training.method", "preference.init_adapter",  # pairs are two sequences; a start adapter, a copy
}  # fmt: skip
#: Activation checkpointing as one choice: (text, gradient_checkpointing, checkpoint_offload) per
#: entry. "Off" leaves the offload setting alone unless it is "on", which needs checkpointing.
CHECKPOINTING: tuple[tuple[str, bool, str | None], ...] = (
    ("Off", False, None),
    ("On, layer inputs to CPU memory if needed (auto)", True, "auto"),
    ("On, layer inputs kept in GPU memory", True, "off"),
    ("On, layer inputs always in CPU memory", True, "on"),
)
#: The saver settings' choices, as the two combos below the checkpointing choice show them.
SAVER_CHOICES = (("auto", "Auto"), ("on", "On"), ("off", "Off"))
DEBOUNCE_MS = 300


class MemoryPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.gpu = QComboBox()
        self.model = QComboBox()
        for combo in (self.gpu, self.model):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(18)
        self.gpu.setToolTip(
            "The memory to compare against: this computer's GPU when it has one, otherwise a GPU from the "
            "catalog (or this computer's RAM for CPU training)."
        )
        self.gpu.currentIndexChanged.connect(lambda _i: self.recompute())
        self.model.addItem("The selected model", None)
        self.model.setToolTip(
            "Estimate a popular model from the built-in catalog instead — e.g. to see whether an 8B model "
            "would fit before downloading it. Catalog models are for estimating only."
        )
        self.model.currentIndexChanged.connect(lambda _i: self.recompute())
        self.bar = MemoryBar()
        self.shape = QLabel()
        self.shape.setObjectName("muted")
        self.shape.setWordWrap(True)
        form = QGridLayout()
        form.setHorizontalSpacing(10)
        form.addWidget(QLabel("Compare with"), 0, 0)
        form.addWidget(self.gpu, 0, 1)
        form.addWidget(QLabel("Model"), 1, 0)
        form.addWidget(self.model, 1, 1)
        form.addWidget(QLabel("Checkpointing"), 2, 0)
        form.addWidget(self._checkpointing_combo(), 2, 1)
        self.tiled_mlp = self._saver_combo(form, 3, "training.tiled_mlp", "Tiled MLP (long sequences)")
        self.norm_recompute = self._saver_combo(form, 4, "training.norm_recompute", "Recompute norms")
        self.chunked_attention = self._saver_combo(form, 5, "training.chunked_attention", "Chunked attention")
        self.lean = FieldEditor(state, "model.lean_kbit_prep", self)
        self.lean.widget.setText("Keep embeddings and output head in 16-bit (quantized models)")
        self.chunked = FieldEditor(state, "training.chunked_loss", self)
        self.chunked.widget.setText("Compute the loss in chunks of tokens")
        form.addWidget(self.lean.widget, 6, 0, 1, 2)
        form.addWidget(self.chunked.widget, 7, 0, 1, 2)
        form.setColumnStretch(1, 1)
        self._show_savers()
        #: Which long-context savers the estimate uses, and whether "auto" turned them on.
        self.savers = QLabel()
        self.savers.setObjectName("muted")
        self.savers.setWordWrap(True)
        self.savers.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(form)
        layout.addWidget(self.bar)
        layout.addWidget(self.savers)
        layout.addWidget(self.shape)
        self.task = BackgroundTask(self, delay_ms=DEBOUNCE_MS)
        self._catalog_task = BackgroundTask(self)
        self._targets: list[tuple[str, str, str | None, int | None]] = []  # label, name, device, bytes
        self._gpus: list[tuple[str, int]] = []
        self._fill_targets(None, [])
        state.config_changed.connect(self._on_config)
        state.device_changed.connect(self._on_device)
        state.theme_changed.connect(self.bar.set_theme)
        self._catalog_task.request(lambda _c: (jobs.gpu_catalog(), jobs.model_catalog()), self._on_catalog)

    # -- savers ------------------------------------------------------------------------------

    def _checkpointing_combo(self) -> QComboBox:
        self.checkpointing = QComboBox()
        self.checkpointing.setObjectName("checkpointingMode")
        self.checkpointing.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.checkpointing.setMinimumContentsLength(18)
        for text, on, offload in CHECKPOINTING:
            self.checkpointing.addItem(text, (on, offload))
        offload_doc = doc("training.checkpoint_offload")
        self.checkpointing.setToolTip(
            f"{doc('training.gradient_checkpointing')}\n\nLayer inputs in CPU memory (offload): {offload_doc}"
        )
        self.checkpointing.activated.connect(self._checkpointing_chosen)
        return self.checkpointing

    def _checkpointing_chosen(self, index: int) -> None:
        on, offload = self.checkpointing.itemData(index)
        if offload is None:  # checkpointing off: "on" would ask for offload without checkpoints
            offload = "auto" if _setting(self.state.value("training.checkpoint_offload")) == "on" else None
        values: dict[str, Any] = {"training.gradient_checkpointing": on}
        if offload is not None:
            values["training.checkpoint_offload"] = offload
        self.state.set_values(values)

    def _saver_combo(self, form: QGridLayout, row: int, dotted: str, label: str) -> FieldEditor:
        """An Auto / On / Off choice for one saver setting, in ``row`` of the panel's form."""
        editor = FieldEditor(self.state, dotted, self, choices=SAVER_CHOICES)
        combo = editor.widget
        assert isinstance(combo, QComboBox)
        combo.setMinimumContentsLength(5)
        name = QLabel(label)
        name.setToolTip(doc(dotted))
        name.setBuddy(combo)
        form.addWidget(name, row, 0)
        form.addWidget(combo, row, 1, Qt.AlignmentFlag.AlignLeft)
        return editor

    def _show_savers(self) -> None:
        """The savers as the config has them; the 16-bit option only means something for 4/8-bit models."""
        if not self.state.value("training.gradient_checkpointing"):
            index = 0
        else:
            offload = _setting(self.state.value("training.checkpoint_offload"))
            index = next((i for i, (_t, on, o) in enumerate(CHECKPOINTING) if on and o == offload), 1)
        self.checkpointing.setCurrentIndex(index)
        self.lean.widget.setEnabled(self.state.value("model.quantization") != "none")

    # -- inputs ------------------------------------------------------------------------------

    def _on_catalog(self, result: tuple[list[tuple[str, int]], list[str]]) -> None:
        self._gpus, models = result
        self._fill_targets(self.state.device, self._gpus)
        for name in models:
            self.model.addItem(f"{name} (catalog)", f"catalog:{name}")

    def _on_device(self, device: Any) -> None:
        self._fill_targets(device, self._gpus)

    def _fill_targets(self, device: Any, gpus: list[tuple[str, int]]) -> None:
        previous = self.gpu.currentText()
        targets: list[tuple[str, str, str | None, int | None]] = []
        if device is not None and device.kind == "cuda":
            targets.append((f"This GPU: {device.describe()}", device.name, "cuda", device.total_bytes))
        elif device is not None:
            import psutil

            ram = int(psutil.virtual_memory().total)
            targets.append((f"This computer: CPU only, {gb(ram)} RAM", "this computer", "cpu", ram))
        else:
            targets.append(("This computer (detecting…)", "", None, None))
        targets += [(f"{name} · {gb(memory)}", name, "cuda", memory) for name, memory in gpus]
        self._targets = targets
        self.gpu.blockSignals(True)
        self.gpu.clear()
        for label, *_rest in targets:
            self.gpu.addItem(label)
        index = self.gpu.findText(previous)
        self.gpu.setCurrentIndex(index if index > 0 else 0)
        self.gpu.blockSignals(False)
        self.recompute()

    def select_gpu(self, name: str) -> bool:
        """Compare with a catalog GPU by name (for the screenshots and for tests)."""
        for i in range(self.gpu.count()):
            if self.gpu.itemText(i).startswith(name + " ·"):
                self.gpu.setCurrentIndex(i)
                return True
        return False

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if changed & MEMORY_FIELDS:
            self._show_savers()
            self.recompute()

    # -- the estimate -------------------------------------------------------------------------

    def recompute(self) -> None:
        index = self.gpu.currentIndex()
        if not self._targets or index < 0:
            return
        _label, name, device, memory = self._targets[index]
        config = self.state.config
        source = self.model.currentData()
        cfg = config.training
        self.shape.setText(
            f"For batch {cfg.batch_size} × {config.data.max_seq_len:,} tokens, {cfg.optimizer} "
            "(batch and optimizer are on the Train page, sequence length on the Data page)."
        )
        self.bar.set_pending()
        self.task.request(
            lambda _cancel: estimate_with_savers(
                config, device=device or "cpu", vram_bytes=memory, source=source
            ),
            lambda result: self._show(result, name, source is None),
            self._failed,
        )

    def _show(self, result: Estimated, device_name: str, own_model: bool) -> None:
        self.bar.set_estimate(result.estimate, device_name)
        self.savers.setText(savers_line(result))
        self.savers.show()
        if own_model:
            self.state.set_estimate(result.estimate)

    def _failed(self, error: Exception) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        self.bar.set_unavailable(f"No estimate: {message}")
        self.savers.hide()
        self.state.set_estimate(None)


# -- the background work (no widgets: it runs off the GUI thread) -------------------------------


@dataclass(frozen=True)
class Estimated:
    """The estimate (``MemoryEstimate.to_dict()``) and the long-context savers its plan resolved."""

    estimate: dict[str, Any]
    savers: tuple[str, ...] = ()  # in use, as words ("norm recompute", "offloaded checkpoints", "tiled MLP")
    auto: tuple[str, ...] = ()  # those of them that "auto" turned on
    left_to_auto: bool = False  # some saver that applies to this run is set to "auto"
    memory_known: bool = True  # "auto" decides against the device's memory; unknown: all stay off


def estimate_with_savers(
    config: RunConfig, *, device: str | None, vram_bytes: int | None, source: str | None = None
) -> Estimated:
    """The analytic memory estimate for ``config`` (or a catalog model instead), with the savers
    its plan resolved (what "auto" turns on is decided by ``plan_for``)."""
    from lora_studio.core.estimate import EstimateRequest, estimate_memory, plan_for
    from lora_studio.core.estimate.request import SAVER_NAMES

    jobs.ensure_libraries()
    if source:
        config = config.with_overrides({"model.source": source})
    request = EstimateRequest.from_config(config, device=device or "cpu", vram_bytes=vram_bytes)
    estimate = estimate_memory(request).to_dict()
    plan = plan_for(request)  # the model's shape is cached by now: only a few more sums
    return Estimated(
        estimate=estimate,
        savers=tuple(plan.savers),
        auto=tuple(SAVER_NAMES[name] for name in plan.auto_savers),
        left_to_auto=bool(plan.auto_allowed),
        memory_known=vram_bytes is not None,
    )


def savers_line(result: Estimated) -> str:
    """One sentence under the bar: the long-sequence savers the estimate uses, and why."""
    head = "Long-sequence savers: "
    if not result.savers:
        if result.left_to_auto and not result.memory_known:
            return head + "none yet ('auto' decides once the memory to compare with is known)."
        return head + ("none needed (auto)." if result.left_to_auto else "none.")
    line = head + ", ".join(result.savers)
    chosen = [name for name in result.savers if name not in result.auto]
    why = "because the run would not fit otherwise"
    if not chosen:
        return f"{line} — turned on by 'auto' {why}."
    if not result.auto:
        return f"{line} — set to On."
    return f"{line} — {', '.join(result.auto)} turned on by 'auto' {why}; {', '.join(chosen)} set to On."


def _setting(value: Any) -> str:
    """A saver setting as "auto" | "on" | "off" (a bool, as older configs and callers have it: on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
