"""The memory panel: the live estimate for the current settings against a chosen GPU.

It recomputes (debounced, in a background task) whenever a setting that changes memory changes,
wherever it was edited — Model, Data or Train page — and publishes the result on the app state so
the Train page can draw it as the dashed "estimate" line next to the measured memory.

The exact memory savers (lean 4-bit preparation, chunked loss, checkpointing with offload) are
edited right here, next to the bar they change: their effect is only visible in the estimate.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QVBoxLayout, QWidget

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
    "training.method", "preference.init_adapter",  # pairs are two sequences; a start adapter, a copy
}  # fmt: skip
#: Activation checkpointing as one choice: (gradient_checkpointing, checkpoint_offload) per entry.
CHECKPOINTING = (
    ("Off", False, False),
    ("On: recompute in backward", True, False),
    ("On, layer inputs in CPU memory", True, True),
)
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
        self.lean = FieldEditor(state, "model.lean_kbit_prep", self)
        self.lean.widget.setText("Keep embeddings and output head in 16-bit (quantized models)")
        self.chunked = FieldEditor(state, "training.chunked_loss", self)
        self.chunked.widget.setText("Compute the loss in chunks of tokens")
        form.addWidget(self.lean.widget, 3, 0, 1, 2)
        form.addWidget(self.chunked.widget, 4, 0, 1, 2)
        form.setColumnStretch(1, 1)
        self._show_savers()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(8)
        layout.addLayout(form)
        layout.addWidget(self.bar)
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
        for text, on, offload in CHECKPOINTING:
            self.checkpointing.addItem(text, (on, offload))
        self.checkpointing.setToolTip(
            doc("training.gradient_checkpointing") + "\n\nOffload: " + doc("training.checkpoint_offload")
        )
        self.checkpointing.activated.connect(self._checkpointing_chosen)
        return self.checkpointing

    def _checkpointing_chosen(self, index: int) -> None:
        on, offload = self.checkpointing.itemData(index)
        self.state.set_values({"training.gradient_checkpointing": on, "training.checkpoint_offload": offload})

    def _show_savers(self) -> None:
        """The savers as the config has them; the 16-bit option only means something for 4/8-bit models."""
        wanted = (
            bool(self.state.value("training.gradient_checkpointing")),
            bool(self.state.value("training.checkpoint_offload")),
        )
        index = next((i for i, (_t, *pair) in enumerate(CHECKPOINTING) if tuple(pair) == wanted), 0)
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
            f"For batch {cfg.batch_size} × {config.data.max_seq_len} tokens, {cfg.optimizer} "
            "(batch and optimizer are on the Train page, sequence length on the Data page)."
        )
        self.bar.set_pending()
        self.task.request(
            lambda _cancel: jobs.estimate(config, device=device or "cpu", vram_bytes=memory, source=source),
            lambda result: self._show(result, name, source is None),
            self._failed,
        )

    def _show(self, estimate: dict[str, Any], device_name: str, own_model: bool) -> None:
        self.bar.set_estimate(estimate, device_name)
        if own_model:
            self.state.set_estimate(estimate)

    def _failed(self, error: Exception) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        self.bar.set_unavailable(f"No estimate: {message}")
        self.state.set_estimate(None)
