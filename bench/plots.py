"""Plots: the cost of one live-plot redraw once a run has logged 100 000 steps.

The Train page's plots (``gui/widgets/training_plots.py`` on ``gui/widgets/plots.py``) are fed one
point per step and redrawn by a timer. Here the points are appended first (100k steps), then each
redraw appends one more step and is forced to really happen: ``refresh()`` (``setData`` on the dirty
curves) and a synchronous full ``repaint()`` of every plot's viewport (axes, grid, legend, curves),
whose curve paints are counted (``PlotCurveItem.paint`` calls) so a redraw that drew nothing cannot
pass. Measured in the same run:

* the loss plot alone (``training_plots.loss_plot``: two curves, downsampled + clip-to-view) at 100k points;
* the whole Train-page plot grid (``TrainingPlots``: five plots, six curves) at 100k steps;
* baseline 1: the same loss plot holding 1k points (what a redraw costs when data is small);
* baseline 2: a plain ``pyqtgraph`` ``PlotDataItem`` with 100k points and no downsampling.

Target: < 16 ms per redraw (median) for the 100k-point loss plot.

    python bench/plots.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from _common import median, print_table, write_results

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

TARGET_MS = 16.0
PAINTS = {"n": 0}


def count_paints() -> None:
    """Count every curve paint (a redraw that paints no curve would be a fake redraw)."""
    import pyqtgraph as pg

    original = pg.PlotCurveItem.paint

    def paint(self: Any, *args: Any) -> Any:
        PAINTS["n"] += 1
        return original(self, *args)

    pg.PlotCurveItem.paint = paint


def loss_curve(n: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    steps = np.arange(1, n + 1, dtype=float)
    return steps, 2.5 * np.exp(-steps / (n / 4)) + 0.3 + 0.2 * rng.standard_normal(n)


def repaint_all(widget: Any) -> None:
    """Repaint every plot view in ``widget`` in full, now (a plain ``repaint()`` of a
    ``QGraphicsView`` repaints only the changed region of its viewport)."""
    from PySide6.QtWidgets import QGraphicsView

    views = [widget] if isinstance(widget, QGraphicsView) else widget.findChildren(QGraphicsView)
    for view in views:
        view.viewport().repaint()


def time_redraws(
    app: Any, widget: Any, append: Any, refresh: Any, start: int, redraws: int
) -> dict[str, Any]:
    """Append one step, refresh, repaint now; time each of ``redraws`` such cycles."""
    repaint_all(widget)
    app.processEvents()
    times = []
    before = PAINTS["n"]
    for i in range(redraws):
        t0 = time.perf_counter()
        append(start + i + 1)
        refresh()
        repaint_all(widget)
        times.append(time.perf_counter() - t0)
        app.processEvents()  # anything the repaint scheduled (not timed: it is not the redraw)
    return {
        "redraws": redraws,
        "median ms": 1000 * median(times),
        "p90 ms": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
        "max ms": 1000 * max(times),
        "curve paints": PAINTS["n"] - before,
    }


def live_loss_plot(app: Any, n: int, redraws: int) -> dict[str, Any]:
    from lora_studio.gui.widgets.training_plots import SMOOTHING, loss_plot

    plot = loss_plot()  # the two loss curves as TrainingPlots draws them
    plot.resize(900, 450)
    plot.show()
    x, y = loss_curve(n + redraws)
    smooth = y.copy()  # the smoothed curve is the same EMA as TrainingPlots'
    for i in range(1, len(y)):
        smooth[i] = SMOOTHING * smooth[i - 1] + (1 - SMOOTHING) * y[i]
    for i in range(n):
        plot.append("loss", x[i], y[i])
        plot.append("loss_smooth", x[i], smooth[i])
    plot.refresh()

    def append(step: int) -> None:
        plot.append("loss", step, y[step - 1])
        plot.append("loss_smooth", step, smooth[step - 1])

    row = time_redraws(app, plot, append, plot.refresh, n, redraws)
    drawn = plot.series["loss"].item.getData()[0]
    plot.close()
    return {"points drawn": len(drawn), **row}


def training_plots(app: Any, n: int, redraws: int) -> dict[str, Any]:
    from lora_studio.gui.widgets.training_plots import GIB, TrainingPlots

    plots = TrainingPlots()
    plots.timer.stop()  # redraws are driven here
    plots.resize(1200, 600)
    plots.show()
    plots.reset(n + redraws)
    x, y = loss_curve(n + redraws)

    def append(step: int) -> None:
        i = step - 1
        plots.add_step(
            step, float(y[i]), 1e-4 * (1 - i / len(x)), 0.5 + 0.1 * y[i], 900.0 + y[i], {"rss": 2 * GIB}
        )

    for step in range(1, n + 1):
        append(step)
    plots.refresh()
    row = time_redraws(app, plots, append, plots.refresh, n, redraws)
    drawn = plots.loss.series["loss"].item.getData()[0]
    plots.close()
    return {"points drawn": len(drawn), **row}


def plain_pyqtgraph(app: Any, n: int, redraws: int) -> dict[str, Any]:
    import numpy as np
    import pyqtgraph as pg

    widget = pg.PlotWidget()
    widget.resize(900, 450)
    widget.show()
    item = pg.PlotDataItem(pen=pg.mkPen("b", width=1.2))
    widget.addItem(item)
    x, y = loss_curve(n + redraws)
    count = {"n": n}

    def append(step: int) -> None:
        count["n"] = step

    def refresh() -> None:
        item.setData(x[: count["n"]], y[: count["n"]])

    refresh()
    row = time_redraws(app, widget, append, refresh, n, redraws)
    drawn = item.getData()[0]
    widget.close()
    assert isinstance(drawn, np.ndarray)
    return {"points drawn": len(drawn), **row}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer redraws")
    args = parser.parse_args()
    redraws = 10 if args.quick else 30
    n = 100_000

    from lora_studio.gui.app import create_app

    app = create_app()
    count_paints()
    rows = [
        {"plot": "loss plot (LivePlot), 100k points", **live_loss_plot(app, n, redraws)},
        {"plot": "Train page grid (TrainingPlots), 100k steps", **training_plots(app, n, redraws)},
        {"plot": "baseline: loss plot, 1k points", **live_loss_plot(app, 1_000, redraws)},
        # a second or more per redraw (it draws every point): a few give its median
        {
            "plot": "baseline: plain PlotDataItem, 100k, no downsampling",
            **plain_pyqtgraph(app, n, min(redraws, 5)),
        },
    ]
    print_table("One redraw (append a step, setData, synchronous repaint), offscreen", rows)
    ours = rows[0]["median ms"]
    met = ours < TARGET_MS and all(r["curve paints"] >= r["redraws"] for r in rows)
    print(
        f"loss plot at 100k points: {ours:.1f} ms per redraw (median; {ours / rows[2]['median ms']:.2f}x the "
        f"1k-point plot, {ours / rows[3]['median ms']:.2f}x plain pyqtgraph without downsampling); "
        f"target < {TARGET_MS:.0f} ms: {'met' if met else 'NOT met'}"
    )
    write_results(
        "plots",
        {
            "rows": rows,
            "points": n,
            "target": "< 16 ms per redraw (median) of the 100k-point loss plot",
            "median_ms": ours,
            "met": met,
        },
    )


if __name__ == "__main__":
    main()
