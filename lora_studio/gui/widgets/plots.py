"""Live plots that stay cheap however long the run (pyqtgraph's scrolling-plot recipe).

Each curve is created once and fed from a numpy buffer that doubles when full; appending only marks
the plot dirty, and a timer owned by the caller redraws dirty plots at most ~10 times a second with
``setData(buffer[:n])``. Peak downsampling and clip-to-view keep a 100 000-step run as fast to draw
as a 100-step one, provided two things (measured by ``bench/plots.py``, a full redraw of a noisy
100k-step loss: 1.8 s → 0.1 s on a loaded 2-core machine): about one sample per pixel
(``DOWNSAMPLE_FACTOR``; pyqtgraph's default draws five), and noisy series drawn with a 1-pixel pen —
Qt strokes a cosmetic pen of width <= 1 with its fast line stroker, while a wider antialiased pen
over a dense zig-zag is filled as a polygon, many times slower.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QWidget

from lora_studio.gui import theme as th
from lora_studio.gui.qt_fixes import guard_paint_override_refcount

pg.setConfigOptions(antialias=True, background=None, foreground="k")
#: Samples drawn per pixel of plot width when downsampling (peak mode keeps each bin's min and max).
DOWNSAMPLE_FACTOR = 1.0


class SeriesBuffer:
    """Growing x/y arrays (amortised O(1) append)."""

    def __init__(self, capacity: int = 256) -> None:
        self.x = np.empty(capacity)
        self.y = np.empty(capacity)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.resize(self.x, 2 * self.n)
            self.y = np.resize(self.y, 2 * self.n)
        self.x[self.n] = x
        self.y[self.n] = y
        self.n += 1

    def clear(self) -> None:
        self.n = 0

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]


class _Series:
    def __init__(self, item: pg.PlotDataItem, name: str, *, line: bool = True) -> None:
        self.item = item
        self.name = name
        self.buffer = SeriesBuffer()
        self.in_legend = False
        self.line = line  # a curve (a lone point of it needs a dot to be seen), not a scatter
        self.dotted = False


class LivePlot(pg.PlotWidget):
    """A titled plot with a step axis, a legend and a light grid; series keyed by name."""

    def __init__(
        self,
        title: str,
        y_label: str,
        parent: QWidget | None = None,
        *,
        x_label: str = "Step",
        legend_at_bottom: bool = False,
    ) -> None:
        super().__init__(parent)
        guard_paint_override_refcount()  # pyqtgraph paints through Python overrides (once per process)
        self.title_text = title
        self.setMinimumHeight(170)
        item = self.getPlotItem()
        item.setDownsampling(mode="peak", auto=True)
        item.setClipToView(True)
        item.showGrid(x=True, y=True, alpha=0.15)
        item.setMenuEnabled(False)
        item.hideButtons()
        self.setLabel("bottom", x_label)
        self.setLabel("left", y_label)
        for axis in ("left", "bottom"):
            item.getAxis(axis).enableAutoSIPrefix(False)
            # major ticks only: the minor level's grid lines cost about half of a redraw
            item.getAxis(axis).setStyle(maxTickLevel=0)
        offset = (-6, -6) if legend_at_bottom else (-6, 6)  # negative: from the right / bottom edge
        self.legend = item.addLegend(offset=offset, labelTextSize="8pt", verSpacing=-6)
        self.series: dict[str, _Series] = {}
        self.lines: dict[str, pg.InfiniteLine] = {}
        self._legend_samples: dict[str, tuple[pg.PlotDataItem, str]] = {}
        self._dirty: set[str] = set()
        #: Absolute quantities (memory) read wrongly on an axis that does not start at zero.
        self.zero_based = False
        #: A quantity with known bounds (an accuracy in %) keeps them: a jump from 50 to 100 % must not
        #: look like the same change as one from 99 to 100 %.
        self.fixed_y: tuple[float, float] | None = None
        self._framed = False  # the x range is set by _frame_lone_points, not automatic
        #: An x range the caller fixed (a run's steps from 0 to the last): lone points do not move it.
        self.x_span: tuple[float, float] | None = None
        self.empty = pg.TextItem("", anchor=(0.5, 0.5))
        self.empty.setParentItem(item.getViewBox())
        item.getViewBox().sigResized.connect(self._place_empty)
        self.apply_theme(th.LIGHT)

    def set_empty_text(self, text: str) -> None:
        """A note in the middle of the plot while it has no data ("Start a run to see the loss")."""
        self.empty.setText(text)
        self.empty.setVisible(bool(text) and not any(s.buffer.n for s in self.series.values()))
        self._place_empty()

    def _place_empty(self) -> None:
        rect = self.getPlotItem().getViewBox().boundingRect()
        self.empty.setPos(rect.center())

    def add_series(
        self,
        key: str,
        name: str,
        colour: str,
        *,
        width: float = 2.0,
        dashed: bool = False,
        points: bool = False,
        alpha: int = 255,
        downsample: str = "peak",
    ) -> None:
        """Create a curve once; it joins the legend when its first point arrives.

        ``downsample`` is how a pixel's worth of steps becomes one drawn sample: ``"peak"`` (its min
        and max: a noisy series keeps its spread) or ``"mean"`` for a smoothed series drawn with a
        wide pen, which peak bins would turn back into a dense zig-zag — a wide pen over one is
        filled as a polygon, ~30x slower (a 2-pixel smoothed loss at 100k steps: 0.37 s → 13 ms).
        """
        c = QColor(colour)
        c.setAlpha(alpha)
        if points:
            item = pg.PlotDataItem(
                pen=None,
                symbol="o",
                symbolSize=8,
                symbolBrush=c,
                symbolPen=pg.mkPen(c.darker(130), width=1),
                autoDownsampleFactor=DOWNSAMPLE_FACTOR,
                skipFiniteCheck=True,
            )
        else:
            style = Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine
            item = pg.PlotDataItem(
                pen=pg.mkPen(c, width=width, style=style),
                symbol=None,  # said outright: given a symbol brush, pyqtgraph would dot every point
                symbolBrush=c,  # used only while the curve has a single point (see refresh)
                symbolPen=None,
                symbolSize=7,
                autoDownsampleFactor=DOWNSAMPLE_FACTOR,
                skipFiniteCheck=True,  # append() keeps NaN and inf out of the buffers
            )
        self.getPlotItem().addItem(item)  # takes the plot's peak mode: set this curve's after it
        item.setDownsampling(auto=True, method=downsample)
        self.series[key] = _Series(item, name, line=not points)

    def add_hline(self, key: str, name: str, colour: str) -> None:
        """A dashed horizontal reference (e.g. the memory estimate), hidden until given a value."""
        pen = pg.mkPen(QColor(colour), width=1.6, style=Qt.PenStyle.DashLine)
        line = pg.InfiniteLine(angle=0, pen=pen, movable=False)
        line.hide()
        self.getPlotItem().addItem(line, ignoreBounds=False)
        self.lines[key] = line
        self._legend_samples[key] = (pg.PlotDataItem(pen=pen), name)

    def set_hline(self, key: str, value: float | None) -> None:
        line = self.lines[key]
        sample, name = self._legend_samples[key]
        if value is None:
            line.hide()
            self.legend.removeItem(sample)
            return
        line.setValue(value)
        line.show()
        if not self._listed(sample):
            self.legend.addItem(sample, name)

    def append(self, key: str, x: float, y: float | None) -> None:
        if y is None or not np.isfinite(y):
            return
        series = self.series[key]
        series.buffer.append(x, y)
        if not series.in_legend:
            self.legend.addItem(series.item, series.name)
            series.in_legend = True
            self.empty.hide()
        self._dirty.add(key)

    def _listed(self, item: pg.PlotDataItem) -> bool:
        """Whether the legend lists ``item`` (its entries hold a sample wrapping the item)."""
        return any(sample.item is item for sample, _label in self.legend.items)

    def count(self, key: str) -> int:
        return self.series[key].buffer.n

    def values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        return self.series[key].buffer.view()

    def refresh(self) -> bool:
        """Redraw the curves that changed since the last refresh; True if anything was drawn."""
        if not self._dirty:
            return False
        for key in self._dirty:
            series = self.series[key]
            x, y = series.buffer.view()
            lone = series.line and len(x) == 1  # a line through one point draws nothing: show a dot
            if lone != series.dotted:
                series.item.setSymbol("o" if lone else None)
                series.dotted = lone
            series.item.setData(x, y)
        self._dirty.clear()
        self._frame_lone_points()
        if self.zero_based:
            tops = [float(s.buffer.view()[1].max()) for s in self.series.values() if s.buffer.n]
            tops += [line.value() for line in self.lines.values() if line.isVisible()]
            self.setYRange(0, max(tops or [1.0]) * 1.15 or 1.0, padding=0)
        elif self.fixed_y is not None:
            self.setYRange(*self.fixed_y, padding=0.05)
        return True

    def set_x_span(self, span: tuple[float, float] | None) -> None:
        """Fix the x axis to ``span`` (the whole run, from its first step), or give it back to the
        automatic range (None)."""
        self.x_span = span
        self._framed = False
        if span is None:
            self.enableAutoRange(axis="x")
        else:
            self.setXRange(*span, padding=0.04)

    def _frame_lone_points(self) -> None:
        """While every series has one point, centre the x axis on it: pyqtgraph's automatic range
        around a single x spans −4 to 6, and a run that stopped at step 1 read as if steps were
        negative. From the second point on the automatic range takes over again."""
        if self.x_span is not None:
            return  # the caller's span already holds every point
        shown = [s.buffer.view() for s in self.series.values() if s.buffer.n]
        if shown and max(len(x) for x, _y in shown) == 1:
            lo, hi = min(float(x[0]) for x, _y in shown), max(float(x[0]) for x, _y in shown)
            margin = max(1.0, 0.5 * max(abs(lo), abs(hi)))
            low = lo - margin if lo < 0 else max(0.0, lo - margin)  # steps and tokens never go negative
            self.setXRange(low, hi + margin, padding=0)
            if not self.zero_based and self.fixed_y is None:
                # the automatic y range around one value is ±0.5 whatever its size: a learning
                # rate of 5e-4 sat on "0". Frame it by its own magnitude instead.
                bottom, top = min(float(y[0]) for _x, y in shown), max(float(y[0]) for _x, y in shown)
                spread = max(abs(bottom), abs(top)) * 0.2 or 1.0
                self.setYRange(bottom - spread, top + spread, padding=0)
            self._framed = True
        elif self._framed:
            self.enableAutoRange()
            self._framed = False

    def clear_data(self) -> None:
        for key, series in self.series.items():
            series.buffer.clear()
            series.item.setData([], [])
            if series.in_legend:
                self.legend.removeItem(series.item)
                series.in_legend = False
            self._dirty.discard(key)
        for key in self.lines:
            self.set_hline(key, None)
        self.empty.setVisible(bool(self.empty.toPlainText()))

    def set_title(self, title: str) -> None:
        """Rename the plot (one plot showing the metric a user chose), in the theme's colours."""
        self.title_text = title
        self.getPlotItem().setTitle(title, color=self._theme.plot_fg, size="10pt")

    def apply_theme(self, theme: Any) -> None:
        self._theme = theme
        self.setBackground(theme.plot_bg)
        item = self.getPlotItem()
        item.setTitle(self.title_text, color=theme.plot_fg, size="10pt")
        for axis in ("left", "bottom"):
            ax = item.getAxis(axis)
            ax.setPen(pg.mkPen(theme.plot_fg))
            ax.setTextPen(pg.mkPen(theme.plot_fg))
        self.legend.setLabelTextColor(theme.plot_fg)
        for _sample, label in self.legend.items:  # pyqtgraph keeps an existing label's old colour
            label.setText(label.text)  # until its text is set again: dark text on a dark plot
        self.empty.setColor(theme.muted)
        bg = QColor(theme.plot_bg)
        bg.setAlpha(200)
        self.legend.setBrush(pg.mkBrush(bg))
