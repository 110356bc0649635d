"""LoRA target modules as checkboxes of the model's real linear layers, bound to ``lora.target_modules``.

The names come from the model itself (built on the meta device, no weights), so a user can only
pick layers that exist; "all linear layers" stays the recommended default.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QGridLayout, QLabel, QRadioButton, QVBoxLayout, QWidget

from lora_studio.gui.state import AppState
from lora_studio.gui.widgets.forms import doc

ALL = "all-linear"
#: Picked first when a user switches from "all" to a choice (the classic LoRA paper's choice).
PREFERRED = ("q_proj", "v_proj")


class TargetModules(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setToolTip(doc("lora.target_modules"))
        self.all = QRadioButton("All linear layers (best quality)")
        self.some = QRadioButton("Only these layers (less memory):")
        self.all.toggled.connect(self._mode_changed)
        self.grid = QGridLayout()
        self.grid.setContentsMargins(22, 0, 0, 0)
        self.grid.setHorizontalSpacing(16)
        self.boxes: dict[str, QCheckBox] = {}
        self.error = QLabel()
        self.error.setObjectName("fieldError")
        self.error.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(3)
        layout.addWidget(self.all)
        layout.addWidget(self.some)
        layout.addLayout(self.grid)
        layout.addWidget(self.error)
        self._updating = False
        self.set_names([])
        state.config_changed.connect(self._on_config)
        state.problems_changed.connect(self._on_problems)

    def set_names(self, names: list[str]) -> None:
        """Show one checkbox per linear layer name of the current model."""
        for box in self.boxes.values():
            box.deleteLater()
        self.boxes = {}
        value = self.state.value("lora.target_modules")
        chosen = list(value) if isinstance(value, list) else []
        for name in chosen:  # names the config has but the model info has not listed (yet)
            if name not in names:
                names = [*names, name]
        for i, name in enumerate(names):
            box = QCheckBox(name)
            box.toggled.connect(self._boxes_changed)
            self.grid.addWidget(box, i // 4, i % 4)
            self.boxes[name] = box
        self.some.setEnabled(bool(names))
        self.refresh()

    def refresh(self) -> None:
        value = self.state.value("lora.target_modules")
        self._updating = True
        try:
            is_all = value == ALL
            self.all.setChecked(is_all)
            self.some.setChecked(not is_all)
            chosen = set(value) if isinstance(value, list) else set()
            for name, box in self.boxes.items():
                box.setChecked(name in chosen)
                box.setEnabled(not is_all)
        finally:
            self._updating = False

    def _on_config(self, _config: Any, changed: frozenset[str]) -> None:
        if "lora.target_modules" in changed:
            self.refresh()

    def _on_problems(self, problems: dict[str, str]) -> None:
        reason = problems.get("lora.target_modules", "")
        self.error.setText(reason)
        self.error.setVisible(bool(reason))

    def _mode_changed(self, all_checked: bool) -> None:
        if self._updating:
            return
        if all_checked:
            self.state.set_value("lora.target_modules", ALL)
            return
        picked = [n for n in PREFERRED if n in self.boxes] or list(self.boxes)[:2]
        self.state.set_value("lora.target_modules", picked)

    def _boxes_changed(self) -> None:
        if self._updating or self.all.isChecked():
            return
        chosen = [name for name, box in self.boxes.items() if box.isChecked()]
        self.state.set_value("lora.target_modules", chosen)
