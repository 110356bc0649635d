"""The Train page's live plots: loss beside memory on one step axis, then LR, gradient norm, speed.

Memory sits next to the loss on the same (linked) step axis, so a user sees what a setting costs
while seeing what it buys. A preference run (DPO, KTO, ORPO, SimPO) adds a row between them: the
rewards of the chosen and the rejected answers, their margin, and the share of pairs ranked right
(KTO, which has no pairs: its KL term instead) — the loss of such a run alone says little about
whether the model learned the preference. Points come from the engine's events during a run, or
from a run folder's ``metrics.jsonl`` when a finished run is shown — the same code draws both.
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
#: ticks once per shown plot in that time (five, eight for a preference run) and redraws one plot a
#: tick (round-robin), so the GUI thread is held by one plot's redraw at a time, never by all at once.
REFRESH_MS = 100


def loss_plot() -> LivePlot:
    """The loss plot's two curves (``bench/plots.py`` times this same plot)."""
    plot = LivePlot("Training loss", "Loss")
    # noisy series get a 1-pixel pen: wider ones cost many times more to draw (widgets/plots.py)
    plot.add_series("loss", "Loss (each step)", th.SERIES["loss"], width=1.0, alpha=110)
    plot.add_series("loss_smooth", "Loss (smoothed)", th.SERIES["loss_smooth"], width=2.0, downsample="mean")
    return plot


#: A plot's least height: two rows of plots for SFT, three (lower ones) for a preference run.
MIN_HEIGHT = 170
PREFERENCE_MIN_HEIGHT = 140
#: What a preference run reports each step (eval rows carry them prefixed ``eval_``).
PREFERENCE_KEYS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "kl")
#: The y axis of the rewards, by method: DPO and KTO reward the log-ratio to the reference model,
#: ORPO and SimPO the answer's mean log-probability (TRL's definitions).
REWARD_AXIS = {
    "dpo": "β × log-ratio",
    "kto": "β × log-ratio",
    "orpo": "β × mean log-prob",
    "simpo": "β × mean log-prob",
}
REWARDS_TITLE = (
    f'Rewards: <span style="color:{th.SERIES["reward_chosen"]}">━ chosen</span>&nbsp; '
    f'<span style="color:{th.SERIES["reward_rejected"]}">━ rejected</span>'
)


def preference_method(values: dict[str, Any] | None) -> str | None:
    """'kto' or 'dpo' (any pair method) from the keys a step reports; None for a supervised step."""
    if not values:
        return None
    return "kto" if "kl" in values else "dpo"


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
        self._preference_plots()
        #: Every plot, shown or not (themes and resets reach them all).
        self.all_plots = [
            self.loss, self.memory, self.rewards, self.margin, self.accuracy, self.kl,
            self.lr, self.grad, self.speed,
        ]  # fmt: skip
        #: The plots shown for the run's method, in the order the timer redraws them.
        self.plots = [self.loss, self.memory, self.lr, self.grad, self.speed]
        self.loss.set_empty_text("Start training to see the loss fall here")
        self.memory.set_empty_text("Memory in use, step by step")
        for plot in (self.lr, self.grad, self.speed, self.rewards, self.margin, self.accuracy, self.kl):
            plot.legend.hide()  # the title names the curves
        self.memory.zero_based = True
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(8)
        grid.addWidget(self.loss, 0, 0, 1, 3)
        grid.addWidget(self.memory, 0, 3, 1, 3)
        grid.addWidget(self.rewards, 1, 0, 1, 2)
        grid.addWidget(self.margin, 1, 2, 1, 2)
        grid.addWidget(self.accuracy, 1, 4, 1, 2)
        grid.addWidget(self.kl, 1, 4, 1, 2)  # KTO's third plot, in the place of the accuracy
        grid.addWidget(self.lr, 2, 0, 1, 2)
        grid.addWidget(self.grad, 2, 2, 1, 2)
        grid.addWidget(self.speed, 2, 4, 1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(2, 2)
        self.grid = grid
        self._ema = 0.0
        self._ema_n = 0
        #: Plot redraws so far (one per plot that had new points to draw).
        self.redraws = 0
        self._next = 0  # the plot the timer looks at first on its next tick
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh_next)
        #: The method whose plots are shown: "sft" (no preference row), a pair method, or "kto".
        self.method = ""
        self.set_method("sft")
        self.timer.start()

    def _preference_plots(self) -> None:
        s = th.SERIES
        # These plots are small: a legend box would cover their curves wherever it sat, so the title
        # names the curves (in their colours), and held-out points are dots of their curve's colour,
        # as the eval loss is beside the loss.
        self.rewards = LivePlot(REWARDS_TITLE, "Reward")
        self.rewards.add_series("reward_chosen", "Chosen", s["reward_chosen"])
        self.rewards.add_series("reward_rejected", "Rejected", s["reward_rejected"])
        self.rewards.add_series("eval_reward_chosen", "Chosen (eval)", s["reward_chosen"], points=True)
        self.rewards.add_series("eval_reward_rejected", "Rejected (eval)", s["reward_rejected"], points=True)
        self.margin = LivePlot("Reward margin", "Chosen − rejected")
        self.margin.add_series("reward_margin", "Margin", s["reward_margin"])
        self.margin.add_series("eval_reward_margin", "Eval margin", s["reward_margin"], points=True)
        self.accuracy = LivePlot("Preference accuracy", "Chosen first (%)")
        self.accuracy.add_series("reward_accuracy", "Accuracy", s["reward_accuracy"])
        self.accuracy.add_series("eval_reward_accuracy", "Eval accuracy", s["reward_accuracy"], points=True)
        self.accuracy.fixed_y = (0.0, 100.0)
        self.kl = LivePlot("KL to the reference", "KL estimate (nats)")
        self.kl.add_series("kl", "KL", s["kl"])
        self.kl.add_series("eval_kl", "Eval KL", s["kl"], points=True)
        self.kl.zero_based = True  # KTO's KL estimate is clamped at zero
        self.rewards.set_empty_text("Both rewards, step by step")
        self.margin.set_empty_text("How far chosen leads rejected")
        self.accuracy.set_empty_text("Pairs where chosen wins")
        self.kl.set_empty_text("Drift from the reference")

    def set_method(self, method: str) -> None:
        """Show the plots a run of this method reports: the preference row only for preference runs."""
        if method == self.method:
            return
        self.method = method
        preference = method != "sft"
        self.rewards.setVisible(preference)
        self.margin.setVisible(preference)
        self.accuracy.setVisible(preference and method != "kto")
        self.kl.setVisible(method == "kto")
        self.grid.setRowStretch(1, 3 if preference else 0)
        for plot in self.all_plots:  # three rows must fit where two did (1360x860, with a message)
            plot.setMinimumHeight(PREFERENCE_MIN_HEIGHT if preference else MIN_HEIGHT)
        if preference:
            self.rewards.setLabel("left", REWARD_AXIS.get(method, "Reward"))
        self.plots = [plot for plot in self.all_plots if not plot.isHidden()]
        self._next = 0
        # each shown plot is looked at every REFRESH_MS, however many are shown
        self.timer.setInterval(max(1, REFRESH_MS // len(self.plots)))

    def reset(self, total_steps: int | None = None, method: str | None = None) -> None:
        for plot in self.all_plots:
            plot.clear_data()
        self._ema, self._ema_n = 0.0, 0
        for plot in self.all_plots:
            plot.enableAutoRange()
            plot.x_span = None
        if method is not None:
            self.set_method(method)
        self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int | None) -> None:
        """Every plot spans the whole run from the start, on the same step axis."""
        if total_steps:
            for plot in self.all_plots:
                plot.set_x_span((0, total_steps))

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
        preference: dict[str, Any] | None = None,
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
        if preference:
            self._add_preference(step, preference, "")

    def _add_preference(self, step: int, values: dict[str, Any], prefix: str) -> None:
        if self.method == "sft":  # a run this page did not start (resumed elsewhere): follow its data
            self.set_method(preference_method(values) or "sft")
        for key, plot in (
            ("reward_chosen", self.rewards),
            ("reward_rejected", self.rewards),
            ("reward_margin", self.margin),
            ("reward_accuracy", self.accuracy),
            ("kl", self.kl),
        ):
            value = values.get(key)
            if isinstance(value, (int, float)):
                plot.append(prefix + key, step, 100 * value if key == "reward_accuracy" else value)

    def on_step(self, event: Any) -> None:
        self.add_step(
            event.step,
            event.loss,
            event.learning_rate,
            event.grad_norm,
            event.tokens_per_s,
            event.mem,
            getattr(event, "preference", None),
        )

    def add_eval(self, step: int, eval_loss: float | None, preference: dict[str, Any] | None = None) -> None:
        self.loss.append("eval_loss", step, eval_loss)
        if preference:
            self._add_preference(step, preference, "eval_")

    def load_metrics(
        self, records: list[dict[str, Any]], total_steps: int | None = None, method: str | None = None
    ) -> None:
        """Draw a run folder's ``metrics.jsonl`` (a finished or interrupted run)."""
        self.reset(total_steps, method)
        for r in records:
            step = int(r.get("step", 0))
            if "eval_loss" in r and "loss" not in r:
                self.add_eval(
                    step,
                    r.get("eval_loss"),
                    {k: r["eval_" + k] for k in PREFERENCE_KEYS if "eval_" + k in r},
                )
            else:
                self.add_step(
                    step,
                    r.get("loss"),
                    r.get("lr"),
                    r.get("grad_norm"),
                    r.get("tokens_per_s"),
                    r.get("mem") or {},
                    {k: r[k] for k in PREFERENCE_KEYS if k in r},
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
        for plot in self.all_plots:
            plot.apply_theme(theme)
