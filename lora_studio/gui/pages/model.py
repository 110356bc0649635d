"""Model page: which model, how its weights are stored, the LoRA adapter's shape, and what it costs.

The model's facts come from its config alone (no weights read), in a background task; the memory
panel re-estimates on every relevant change. Catalog models appear in the memory panel only —
they can be estimated but not trained, because their weights are not on this computer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lora_studio.core.models import DEFAULT_MODEL_NAME
from lora_studio.gui import jobs
from lora_studio.gui.pages import Page
from lora_studio.gui.widgets.forms import Card, Foldable, Form, doc
from lora_studio.gui.widgets.memory_panel import MemoryPanel
from lora_studio.gui.widgets.targets import TargetModules
from lora_studio.gui.workers import BackgroundTask

QUANTIZATION = [
    ("none", "None (16/32-bit weights)"),
    ("int8", "8-bit"),
    ("nf4", "4-bit NF4 (QLoRA)"),
    ("fp4", "4-bit FP4"),
]
COMPUTE = [("auto", "Automatic"), ("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")]
INIT = [("default", "Default (starts from the base model)"), ("gaussian", "Gaussian"), ("pissa", "PiSSA"),
        ("olora", "OLoRA")]  # fmt: skip
MODEL_FIELDS = {"model.source", "model.trust_remote_code", "model.allow_pickle"}


def scroll(*widgets: QWidget) -> QScrollArea:
    """A vertical column of cards that scrolls when the window is short."""
    inner = QWidget()
    column = QVBoxLayout(inner)
    column.setContentsMargins(0, 0, 6, 0)
    column.setSpacing(12)
    for widget in widgets:
        column.addWidget(widget)
    column.addStretch(1)
    area = _Column()
    area.setWidgetResizable(True)
    area.setWidget(inner)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return area


class _Column(QScrollArea):
    """Never narrower than its cards can be: a squeezed column clips text (a form's units) instead of
    wrapping it. Asked each time, not fixed once: fonts and the style sheet change the cards' widths
    after construction (a fixed width taken before them cut "passes" and "checkpoints" off)."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is not None:
            width = inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width() + 2
            hint.setWidth(max(hint.width(), width))
        return hint


class ModelPage(Page):
    key = "model"
    title = "Model"
    summary = "Choose the model to fine-tune, how its weights are stored, and the shape of the LoRA adapter."
    icon = "model"

    def __init__(self, state: Any, runs: Any, parent: QWidget | None = None) -> None:
        super().__init__(state, runs, parent)
        self.info_task = BackgroundTask(self)
        self.hub_task = BackgroundTask(self)
        self.hub_models: list[str] = []
        self.memory = MemoryPanel(state)
        self.targets = TargetModules(state)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("modelSplitter")
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(scroll(self._source_card(), self._quant_card(), self._lora_card()))
        memory_card = Card("Memory", subtitle="Estimated from the model's shape — no weights are read.")
        memory_card.add(self.memory)
        splitter.addWidget(scroll(memory_card, self._facts_card()))
        splitter.setSizes([600, 640])
        self.content.addWidget(splitter, 1)
        state.config_changed.connect(self._on_config)
        self.refresh_model()
        self.hub_task.request(lambda _cancel: jobs.cached_hub_models(), self._on_hub_models)

    # -- cards ----------------------------------------------------------------------------------

    def _source_card(self) -> Card:
        card = Card("Model to fine-tune")
        self.source = QComboBox()
        self.source.setObjectName("field:model.source")
        self.source.setToolTip(doc("model.source"))
        self.source.setMinimumWidth(260)
        self.source.activated.connect(self._source_chosen)
        folder = QPushButton("Folder…")
        folder.setToolTip("Choose a Hugging Face model folder (config.json + *.safetensors).")
        folder.clicked.connect(self._choose_folder)
        gguf = QPushButton("GGUF file…")
        gguf.setToolTip("Choose a .gguf model file; it is converted once and cached.")
        gguf.clicked.connect(self._choose_gguf)
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(folder)
        row.addWidget(gguf)
        card.body.addLayout(row)
        self.source_note = QLabel()
        self.source_note.setObjectName("muted")
        self.source_note.setWordWrap(True)
        self.source_error = QLabel()
        self.source_error.setObjectName("fieldError")
        self.source_error.setWordWrap(True)
        self.source_error.hide()
        card.add(self.source_note)
        card.add(self.source_error)
        self._fill_sources()
        return card

    def _facts_card(self) -> Card:
        card = Card("About this model", subtitle="From its configuration file.")
        self.facts: dict[str, QLabel] = {}
        grid = QGridLayout()
        grid.setHorizontalSpacing(16)
        grid.setVerticalSpacing(5)
        names = [
            ("architecture", "Architecture"), ("parameters", "Parameters"), ("layers", "Layers"),
            ("hidden", "Hidden size"), ("heads", "Attention heads"), ("context", "Context length"),
            ("vocab", "Vocabulary"), ("dtype", "Stored as"), ("template", "Chat template"),
        ]  # fmt: skip
        for i, (key, label) in enumerate(names):
            name = QLabel(label)
            name.setObjectName("muted")
            value = QLabel("…")
            value.setObjectName("factValue")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            row, col = divmod(i, 2)
            grid.addWidget(name, row, col * 2)
            grid.addWidget(value, row, col * 2 + 1)
            self.facts[key] = value
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        card.body.addLayout(grid)
        return card

    def _quant_card(self) -> Card:
        card = Card("Weights", subtitle="4-bit weights (QLoRA) need about a quarter of the memory of 16-bit.")
        form = Form(self.state, self.title)
        form.add_field("model.quantization", "Quantization", choices=QUANTIZATION)
        self.double_quant = form.add_field("model.double_quant", "Double quantization (4-bit only)")
        form.add_field("model.compute_dtype", "Compute precision", choices=COMPUTE)
        card.add(form)
        advanced = Foldable("Advanced: safety")
        inner = Form(self.state, self.title, advanced.content)
        QVBoxLayout(advanced.content).addWidget(inner)
        inner.add_field("model.trust_remote_code", "Run code shipped with the model (trust_remote_code)")
        inner.add_field("model.allow_pickle", "Allow pickled .bin weights")
        card.add(advanced)
        self._sync_double_quant()
        return card

    def _lora_card(self) -> Card:
        card = Card("LoRA adapter", subtitle="The small set of weights that training learns.")
        form = Form(self.state, self.title)
        form.add_field("lora.r", "Rank (r)", minimum=1, maximum=4096)
        form.add_field("lora.alpha", "Alpha (scaling)", kind="float")
        form.add_field("lora.dropout", "Dropout", kind="float")
        card.add(form)
        targets_title = QLabel("Layers that get adapters")
        targets_title.setToolTip(doc("lora.target_modules"))
        card.add(targets_title)
        card.add(self.targets)
        advanced = Foldable("Advanced: DoRA, rsLoRA, initialisation")
        inner = Form(self.state, self.title, advanced.content)
        QVBoxLayout(advanced.content).addWidget(inner)
        inner.add_field("lora.use_dora", "DoRA (weight-decomposed LoRA)")
        inner.add_field("lora.use_rslora", "Rank-stabilised scaling (rsLoRA)")
        inner.add_field("lora.init", "Initialisation", choices=INIT)
        card.add(advanced)
        self.state.field_labels["lora.target_modules"] = (self.title, "Layers that get adapters")
        return card

    # -- the model source -----------------------------------------------------------------------

    def _fill_sources(self) -> None:
        """Default, the current choice, and the models in the local Hugging Face cache."""
        self.source.blockSignals(True)
        self.source.clear()
        self.source.addItem(f"Default — {DEFAULT_MODEL_NAME} (bundled)", "default")
        current = self.state.config.model.source
        if current != "default" and current not in self.hub_models:
            self.source.addItem(_short(current), current)
        for hub_id in self.hub_models:
            self.source.addItem(f"{hub_id} (Hugging Face cache)", hub_id)
        self.source.setCurrentIndex(max(0, self.source.findData(current)))
        self.source.blockSignals(False)

    def _on_hub_models(self, hub_models: list[str]) -> None:
        self.hub_models = hub_models
        self._fill_sources()

    def _source_chosen(self, index: int) -> None:
        self.state.set_value("model.source", self.source.itemData(index))

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a Hugging Face model folder")
        if folder:
            self.state.set_value("model.source", folder)

    def _choose_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF model file", "", "GGUF models (*.gguf)")
        if path:
            self.state.set_value("model.source", path)

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if "model.source" in changed:
            self._fill_sources()
        if changed & MODEL_FIELDS:
            self.refresh_model()
        if "model.quantization" in changed:
            self._sync_double_quant()

    def _sync_double_quant(self) -> None:
        four_bit = self.state.config.model.quantization in ("nf4", "fp4")
        if not four_bit and self.state.config.model.double_quant:
            self.state.set_value("model.double_quant", False)
        self.double_quant.widget.setEnabled(four_bit)

    def refresh_model(self) -> None:
        """Read the model's facts in the background (the first use of 'default' converts it once)."""
        cfg = self.state.config.model
        self.source_note.setText(
            "Reading the model's configuration… (the first use of the bundled model converts it once, "
            "about half a minute)"
            if cfg.source == "default"
            else "Reading the model's configuration…"
        )
        for value in self.facts.values():
            value.setText("…")
        source, trust, pickle = cfg.source, cfg.trust_remote_code, cfg.allow_pickle
        self.info_task.request(
            lambda _cancel: jobs.model_facts(source, trust_remote_code=trust, allow_pickle=pickle),
            self._show_facts,
            self._show_failure,
        )

    def _show_facts(self, facts: jobs.ModelFacts) -> None:
        info = facts.info
        self.source_error.hide()
        self.source_note.setText(f"{info.name} · {info.kind} · {info.path}")
        self.source_note.setToolTip(info.path)
        values = {
            "architecture": info.architecture,
            "parameters": _count(info.parameters),
            "layers": str(info.layers),
            "hidden": f"{info.hidden_size:,}",
            "heads": f"{info.heads} ({info.kv_heads} key/value)",
            "context": f"{info.context_length:,} tokens" if info.context_length else "unknown",
            "vocab": f"{info.vocab_size:,} tokens",
            "dtype": info.dtype,
            "template": "yes" if info.chat_template else "no (a simple fallback is used)",
        }
        for key, text in values.items():
            self.facts[key].setText(text)
        self.facts["parameters"].setToolTip(f"{info.parameters:,} parameters (tied embeddings counted once)")
        self.messages.clear()
        self.targets.set_names(facts.linear_modules)
        self.state.set_model_info(info)

    def _show_failure(self, error: Exception) -> None:
        self.source_note.setText("")
        self.source_error.setText(getattr(error, "message", str(error)))
        self.source_error.setToolTip(getattr(error, "hint", "") or "")
        self.source_error.show()
        for value in self.facts.values():
            value.setText("—")
        self.messages.show_error(error)
        self.state.set_model_failure(error)


def _short(source: str) -> str:
    path = Path(source)
    return f"{path.name} — {source}" if path.name and path.name != source else source


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} billion" if n >= 1e9 else f"{n / 1e6:.1f} million"


PAGE = ModelPage
