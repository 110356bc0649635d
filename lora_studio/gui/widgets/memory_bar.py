"""The memory bar: the estimate's components stacked against the GPU's memory, with a verdict.

The bar answers "will it fit, and what is taking the space?" in one look: each component (weights,
LoRA, gradients, optimizer, activations, logits, overhead) is a coloured segment, a marker shows the
GPU's memory, and the legend gives each component in GB. Advice lines from the estimator say which
single change would make a run fit.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from lora_studio.gui import theme as th

GIB = 1024**3


def gb(n: float | None) -> str:
    if n is None:
        return "?"
    value = n / GIB
    if value < 0.1:
        return f"{n / 1024**2:.1f} MB" if n < 10 * 1024**2 else f"{n / 1024**2:.0f} MB"
    return f"{value:.2f} GB" if value < 10 else f"{value:.1f} GB"


class _Bar(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.segments: list[tuple[str, int]] = []
        self.device_bytes: int | None = None
        self.device_label = ""  # written beside the marker: "RTX 3060 · 12.0 GB"
        self.total = 0
        self.setMinimumHeight(34)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.theme = th.LIGHT

    def paintEvent(self, _event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        t = self.theme
        rect = QRectF(1, 4, self.width() - 2, self.height() - 8)
        p.setPen(QPen(QColor(t.border), 1))
        p.setBrush(QColor(t.base))
        p.drawRoundedRect(rect, 5, 5)
        scale = max(self.total, self.device_bytes or 0) * 1.04 or 1
        x = rect.left()
        p.setPen(Qt.PenStyle.NoPen)
        for key, size in self.segments:
            width = rect.width() * size / scale
            if width <= 0:
                continue
            p.setBrush(QColor(th.COMPONENTS.get(key, ("", t.muted))[1]))
            p.drawRect(QRectF(x, rect.top() + 1, width, rect.height() - 2))
            x += width
        if self.device_bytes:
            marker = rect.left() + rect.width() * self.device_bytes / scale
            over = self.total > self.device_bytes
            p.setPen(QPen(QColor(t.error if over else t.text), 2.5))
            p.drawLine(int(marker), 0, int(marker), self.height())
            self._label_marker(p, marker, x, rect)
        p.end()

    def _label_marker(self, p: QPainter, marker: float, filled: float, rect: QRectF) -> None:
        """Say what the line is, where there is room: left of it over the empty part, else right."""
        if not self.device_label:
            return
        font = p.font()
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        width = p.fontMetrics().horizontalAdvance(self.device_label) + 12
        if marker - filled >= width:
            box = QRectF(marker - width, rect.top(), width - 6, rect.height())
            align = Qt.AlignmentFlag.AlignRight
        elif rect.right() - marker >= width:
            box = QRectF(marker + 6, rect.top(), width - 6, rect.height())
            align = Qt.AlignmentFlag.AlignLeft
        else:
            return  # the tooltip still says it
        p.setPen(QColor(self.theme.muted))
        p.drawText(box, align | Qt.AlignmentFlag.AlignVCenter, self.device_label)


class MemoryBar(QWidget):
    """Stacked bar + verdict + legend + advice for one ``MemoryEstimate.to_dict()``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.verdict = QLabel("Estimating…")
        self.verdict.setObjectName("verdictNeutral")
        self.verdict.setWordWrap(True)
        self.bar = _Bar()
        self.legend = QGridLayout()
        self.legend.setHorizontalSpacing(14)
        self.legend.setVerticalSpacing(2)
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.verdict)
        layout.addWidget(self.bar)
        layout.addLayout(self.legend)
        layout.addWidget(self.advice)
        self.estimate: dict[str, Any] | None = None

    def set_theme(self, theme: Any) -> None:
        self.bar.theme = theme
        self.bar.update()

    def set_pending(self, text: str = "Estimating…") -> None:
        self._set_verdict("verdictNeutral", text)

    def set_unavailable(self, text: str) -> None:
        self.estimate = None
        self.bar.segments, self.bar.total = [], 0
        self.bar.update()
        self._clear_legend()
        self.advice.setText("")
        self._set_verdict("verdictNeutral", text)

    def set_estimate(self, estimate: dict[str, Any], device_name: str = "") -> None:
        self.estimate = estimate
        sizes = estimate.get("bytes", {})
        total = int(sizes.get("total", 0))
        device = estimate.get("device_bytes")
        self.bar.segments = [(k, int(sizes.get(k) or 0)) for k in th.COMPONENTS if sizes.get(k)]
        self.bar.total, self.bar.device_bytes = total, device
        memory = device_name if device_name and device_name != "this computer" else "This computer"
        self.bar.device_label = f"{memory} · {gb(device)}" if device else ""
        self.bar.setToolTip(f"The line marks the memory of {device_name or 'the device'}" if device else "")
        self.bar.update()
        where = f" {'in' if device_name == 'this computer' else 'on'} {device_name}" if device_name else ""
        fits = estimate.get("fits")
        if fits is None or not device:
            self._set_verdict("verdictNeutral", f"Needs about {gb(total)} — choose a GPU to compare")
        elif fits:
            share = 100 * total / device
            self._set_verdict("verdictOk", f"✓ Fits{where}: {gb(total)} of {gb(device)} ({share:.0f}%)")
        else:
            self._set_verdict(
                "verdictBad", f"✗ Does not fit{where}: needs {gb(total)}, {gb(device)} available"
            )
        self._fill_legend(sizes, estimate.get("explanations") or {})
        advice = estimate.get("advice") or []
        self.advice.setText("".join(f"<div style='margin-top:3px'>• {_escape(a)}</div>" for a in advice))

    def _set_verdict(self, name: str, text: str) -> None:
        self.verdict.setObjectName(name)
        self.verdict.setText(text)
        self.verdict.style().unpolish(self.verdict)
        self.verdict.style().polish(self.verdict)

    def _clear_legend(self) -> None:
        while self.legend.count():
            item = self.legend.takeAt(0)
            if item.widget():
                item.widget().deleteLater()

    def _fill_legend(self, sizes: dict[str, Any], explanations: dict[str, str]) -> None:
        """Two columns of swatch · name · GB; hovering a name says what the component is made of
        (e.g. whether the loss is chunked or the checkpoints offloaded)."""
        self._clear_legend()
        shown = [(k, v) for k, v in th.COMPONENTS.items() if sizes.get(k)]
        for i, (key, (name, colour)) in enumerate(shown):
            swatch = QLabel("■")
            swatch.setStyleSheet(f"color: {colour}; font-size: 13pt;")
            label = QLabel(f"{name}  <b>{gb(int(sizes[key]))}</b>")
            label.setToolTip(explanations.get(key, ""))
            row, col = divmod(i, 2)
            self.legend.addWidget(swatch, row, col * 2)
            self.legend.addWidget(label, row, col * 2 + 1)
        self.legend.setColumnStretch(1, 1)
        self.legend.setColumnStretch(3, 1)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
