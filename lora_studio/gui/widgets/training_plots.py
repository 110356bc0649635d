"""The Train page's live plots: loss beside memory on one step axis, then LR, gradient norm, speed.

Memory sits next to the loss on the same (linked) step axis, so a user sees what a setting costs
while seeing what it buys. Points come from the engine's events during a run, or from a run
folder's ``metrics.jsonl`` when a finished run is shown — the same code draws both.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGridLayout, QWidget

from lora_studio.gui import theme as th
from lora_studio.gui.widgets.plots import LivePlot

GIB = 1024**3
#: Debiased exponential moving average weight for the smoothed loss.
SMOOTHING = 0.7
#: Redraw interval of each plot: at most 10 redraws a second, however fast steps arrive. The timer
#: ticks five times as often and redraws one plot a tick (round-robin), so the GUI thread is held
#: by one plot's redraw at a time, never by all five at once.
REFRESH_MS = 100


def loss_plot() -> LivePlot:
    """The loss plot's two curves (``bench/plots.py`` times this same plot)."""
    plot = LivePlot("Training loss", "Loss")
    # noisy series get a 1-pixel pen: wider ones cost many times more to draw (widgets/plots.py)
    plot.add_series("loss", "Loss (each step)", th.SERIES["loss"], width=1.0, alpha=110)
    plot.add_series("loss_smooth", "Loss (smoothed)", th.SERIES["loss_smooth"], width=2.0, downsample="mean")
    return plot


class TrainingPlots(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        s = th.SERIES
        self.loss = loss_plot()
        self.loss.add_series("eval_loss", "Eval loss", s["eval_loss"], points=True)
        self.memory = LivePlot("Memory", "Memory (GB)", legend_at_bottom=True)  # memory rises, then levels
        self.memory.add_series("allocated", "GPU allocated", s["mem_allocated"])
        self.memory.add_series("reserved", "GPU reserved", s["mem_reserved"])
        self.memory.add_series("peak", "GPU peak in interval", s["mem_peak"], width=1.4, alpha=170)
        self.memory.add_series("rss", "Process memory (RAM)", s["mem_rss"])
        self.memory.add_hline("estimate", "Estimate", s["mem_estimate"])
        self.lr = LivePlot("Learning rate", "Learning rate")
        self.lr.add_series("lr", "Learning rate", s["learning_rate"])
        self.grad = LivePlot("Gradient norm", "Norm (before clipping)")
        self.grad.add_series("grad_norm", "Gradient norm", s["grad_norm"], width=1.0)
        self.speed = LivePlot("Speed", "Tokens per second")
        self.speed.add_series("tokens_per_s", "Tokens/s", s["tokens_per_s"], width=1.0)
        self.plots = [self.loss, self.memory, self.lr, self.grad, self.speed]
        self.loss.set_empty_text("Start training to see the loss fall here")
        self.memory.set_empty_text("Memory in use, step by step")
        for plot in (self.lr, self.grad, self.speed):
            plot.legend.hide()  # one curve: the title names it
        self.memory.zero_based = True
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(8)
        grid.addWidget(self.loss, 0, 0, 1, 3)
        grid.addWidget(self.memory, 0, 3, 1, 3)
        grid.addWidget(self.lr, 1, 0, 1, 2)
        grid.addWidget(self.grad, 1, 2, 1, 2)
        grid.addWidget(self.speed, 1, 4, 1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)
        self._ema = 0.0
        self._ema_n = 0
        #: Plot redraws so far (one per plot that had new points to draw).
        self.redraws = 0
        self._next = 0  # the plot the timer looks at first on its next tick
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS // len(self.plots))
        self.timer.timeout.connect(self.refresh_next)
        self.timer.start()

    def reset(self, total_steps: int | None = None) -> None:
        for plot in self.plots:
            plot.clear_data()
        self._ema, self._ema_n = 0.0, 0
        for plot in self.plots:
            plot.enableAutoRange()
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int | None) -> None:
        """Every plot spans the whole run from the start, on the same step axis."""
        if total_steps:
            for plot in self.plots:
                plot.setXRange(0, total_steps, padding=0.04)

    def set_estimate(self, total_bytes: int | None) -> None:
        """The memory estimate as a dashed line (GPU runs only: RAM also holds the libraries)."""
        self.memory.set_hline("estimate", total_bytes / GIB if total_bytes else None)

    def add_step(
        self,
        step: int,
        loss: float | None,
        lr: float | None,
        grad_norm: float | None,
        tokens_per_s: float | None,
        mem: dict[str, Any],
    ) -> None:
        if loss is not None:
            self.loss.append("loss", step, loss)
            self._ema_n += 1
            self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * loss
            self.loss.append("loss_smooth", step, self._ema / (1 - SMOOTHING**self._ema_n))
        self.lr.append("lr", step, lr)
        self.grad.append("grad_norm", step, grad_norm)
        self.speed.append("tokens_per_s", step, tokens_per_s)
        if "cuda_allocated" in mem:
            self.memory.append("allocated", step, mem["cuda_allocated"] / GIB)
            self.memory.append("reserved", step, mem.get("cuda_reserved", 0) / GIB)
            if "cuda_peak" in mem:
                self.memory.append("peak", step, mem["cuda_peak"] / GIB)
        elif "rss" in mem:
            self.memory.append("rss", step, mem["rss"] / GIB)

    def on_step(self, event: Any) -> None:
        self.add_step(
            event.step, event.loss, event.learning_rate, event.grad_norm, event.tokens_per_s, event.mem
        )

    def add_eval(self, step: int, eval_loss: float | None) -> None:
        self.loss.append("eval_loss", step, eval_loss)

    def load_metrics(self, records: list[dict[str, Any]], total_steps: int | None = None) -> None:
        """Draw a run folder's ``metrics.jsonl`` (a finished or interrupted run)."""
        self.reset(total_steps)
        for r in records:
            step = int(r.get("step", 0))
            if "eval_loss" in r and "loss" not in r:
                self.add_eval(step, r.get("eval_loss"))
            else:
                self.add_step(
                    step,
                    r.get("loss"),
                    r.get("lr"),
                    r.get("grad_norm"),
                    r.get("tokens_per_s"),
                    r.get("mem") or {},
                )
        self.refresh()

    def refresh(self) -> None:
        """Redraw every plot with new points now (a loaded run folder, tests)."""
        self.redraws += sum(plot.refresh() for plot in self.plots)

    def refresh_next(self) -> None:
        """The timer's tick: redraw the next plot, in turn, that has new points."""
        count = len(self.plots)
        for offset in range(count):
            index = (self._next + offset) % count
            if self.plots[index].refresh():
                self.redraws += 1
                self._next = (index + 1) % count
                return

    def apply_theme(self, theme: Any) -> None:
        for plot in self.plots:
            plot.apply_theme(theme)
