"""The Export page's list of GGUF file types: one checkbox each, with its size on disk and memory to run.

A person choosing between Q4_K_M and Q8_0 is choosing a size and a quality, so each row shows
what the plan computed for this base model (``GGUFChoice``: file size, llama.cpp's memory for a
4k context) and its tooltip says what the type is for. The Ollama Modelfile names one GGUF — the
first of the plan's quants — so with several types ticked a small combo chooses which one; it is
``modelfile_row``, which the page puts beside its Modelfile checkbox (a row of its own made the
page taller than the window).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QGridLayout, QHBoxLayout, QLabel, QWidget

from lora_studio.core.export import QUANTS, size_text
from lora_studio.core.export.types import DEFAULT_QUANT

#: What each type is for, in one line: the checkbox's tooltip.
QUANT_PURPOSES = {
    "q4_k_m": "The usual choice: the smallest file that keeps the model's quality (Ollama's default).",
    "q5_k_m": "A little larger than Q4_K_M, a little closer to the original.",
    "q6_k": "Near-lossless, about 1.5× the size of Q4_K_M.",
    "q8_0": "Practically lossless, about twice the size of Q4_K_M.",
    "f16": "Unquantized (16-bit): for converting or quantizing further, not for everyday running.",
    "bf16": "Unquantized (bfloat16): for converting or quantizing further, not for everyday running.",
    "q5_0": "Legacy 5-bit type, for runtimes without K-quant support.",
    "q4_0": "Legacy 4-bit type, for runtimes without K-quant support.",
}


def label(quant: str) -> str:
    return quant.upper()


def context_text(tokens: int) -> str:
    return f"{tokens // 1024}k context" if tokens % 1024 == 0 else f"{tokens} tokens of context"


def choice_text(choice: Any) -> str:
    """'104 MB on disk · about 450 MB to run (4k context)'."""
    return (
        f"{size_text(choice.file_bytes)} on disk · about {size_text(choice.run_bytes)} to run "
        f"({context_text(choice.context)})"
    )


def choice_details(choice: Any) -> str:
    """The size label's tooltip: the purpose, then how the file is stored."""
    stored = ", ".join(f"{count} {kind}" for kind, count in choice.storage.items())
    return (
        f"{QUANT_PURPOSES.get(choice.quant, '')}\n{choice.bits_per_weight:.2f} bits per weight"
        + (f"; tensors stored as {stored}" if stored else "")
        + (f"\n{choice.note[0].upper()}{choice.note[1:]}." if choice.note else "")
        + f"\nMemory to run: the weights, a {choice.context}-token KV cache and llama.cpp's buffers."
    )


def gguf_sizes(source: str) -> list[Any]:
    """Every type's ``GGUFChoice`` for the source's base model, from tensor shapes (no weights read);
    empty when it cannot tell or the model cannot be written as GGUF. Off the GUI thread: it may
    resolve (convert, once) the base model."""
    from lora_studio.core.errors import LoraStudioError
    from lora_studio.core.export.plan import gguf_choices_for

    try:
        return gguf_choices_for(source)
    except LoraStudioError:
        return []


class GGUFTypeList(QWidget):
    """Checkboxes for every GGUF type (Q4_K_M ticked), their sizes once planned, and "Modelfile uses"."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(2)
        grid.setColumnStretch(1, 1)
        self.boxes: dict[str, QCheckBox] = {}
        self.sizes: dict[str, QLabel] = {}
        for row, quant in enumerate(QUANTS):
            box = QCheckBox(label(quant))
            box.setChecked(quant == DEFAULT_QUANT)
            box.setToolTip(QUANT_PURPOSES.get(quant, ""))
            box.toggled.connect(self._toggled)
            size = QLabel("")
            size.setObjectName("muted")
            size.setToolTip(QUANT_PURPOSES.get(quant, ""))
            self.boxes[quant], self.sizes[quant] = box, size
            grid.addWidget(box, row, 0)
            grid.addWidget(size, row, 1)
        self.note = QLabel("")  # when K-quants fall back to 32-element types on this model's rows
        self.note.setObjectName("muted")
        self.note.setWordWrap(True)
        self.note.hide()
        grid.addWidget(self.note, len(QUANTS), 0, 1, 2)
        self.modelfile_row = QWidget()  # placed by the page, beside the Modelfile checkbox
        line = QHBoxLayout(self.modelfile_row)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(QLabel("uses"))
        self.modelfile_quant = QComboBox()
        self.modelfile_quant.setToolTip("The GGUF file the Ollama Modelfile points at (its FROM line)")
        self.modelfile_quant.currentIndexChanged.connect(lambda _i: self.changed.emit())
        line.addWidget(self.modelfile_quant)
        self.modelfile_row.setToolTip(self.modelfile_quant.toolTip())
        self._modelfile = False
        self._sync_modelfile()

    # -- what is chosen ---------------------------------------------------------------------------

    def checked(self) -> list[str]:
        """The ticked types, in QUANTS order."""
        return [quant for quant, box in self.boxes.items() if box.isChecked()]

    def quants(self) -> list[str]:
        """The ticked types for ``plan_export``, the Modelfile's first (the plan writes it beside ``quants[0]``)."""
        chosen = self.checked()
        first = self.modelfile_quant.currentData() if self._offers_modelfile(chosen) else None
        if first in chosen:
            chosen.remove(first)
            chosen.insert(0, first)
        return chosen

    def set_modelfile(self, selected: bool) -> None:
        """Offer "Modelfile uses" only when a Modelfile is exported and there is a choice to make."""
        self._modelfile = selected
        self._sync_modelfile()

    def set_checked(self, quants: Sequence[str]) -> None:
        for quant, box in self.boxes.items():
            box.setChecked(quant in quants)

    # -- sizes ------------------------------------------------------------------------------------

    def show_choices(self, choices: Sequence[Any]) -> None:
        """Sizes from a plan's ``gguf_choices``; types missing from it show nothing."""
        known = {choice.quant: choice for choice in choices}
        for quant, size in self.sizes.items():
            choice = known.get(quant)
            size.setText(choice_text(choice) if choice else "")
            size.setToolTip(choice_details(choice) if choice else QUANT_PURPOSES.get(quant, ""))
        noted = known.get(DEFAULT_QUANT)
        if noted is not None and noted.note:
            # "181 of 211 matrices are stored as Q5_0/Q8_0: this model's rows of 576 are not ..."
            self.note.setText(f"{noted.label} on this model: {noted.note}.")
        self.note.setVisible(noted is not None and bool(noted.note))

    def clear_sizes(self) -> None:
        self.show_choices([])

    # -- internals --------------------------------------------------------------------------------

    def _toggled(self, _on: bool) -> None:
        self._sync_modelfile()
        self.changed.emit()

    def _sync_modelfile(self) -> None:
        chosen = self.checked()
        combo = self.modelfile_quant
        before = combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        for quant in chosen:
            combo.addItem(label(quant), quant)
        combo.setCurrentIndex(max(0, combo.findData(before)))
        combo.blockSignals(False)
        self.modelfile_row.setVisible(self._offers_modelfile(chosen))

    def _offers_modelfile(self, chosen: list[str]) -> bool:
        return self._modelfile and len(chosen) > 1
