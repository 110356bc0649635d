"""Render the application icon's PNG sizes from resources/icons/lora-studio.svg.

The desktop entry (hicolor theme), the window icon and the bundle use the PNGs: some desktops and
file managers do not read SVG icons, and a renderer picked per size keeps the 16 px one crisp.
Qt's own SVG renderer draws them, so no other image tool is needed.

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/render_icons.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "resources" / "icons" / "lora-studio.svg"
OUT = ROOT / "resources" / "icons" / "png"
SIZES = (16, 32, 48, 64, 128, 256, 512)


def render(source: Path = SOURCE, out: Path = OUT, sizes: tuple[int, ...] = SIZES) -> list[Path]:
    """Write ``lora-studio-<size>.png`` for each size; returns the files written."""
    renderer = QSvgRenderer(str(source))
    if not renderer.isValid():
        raise SystemExit(f"error: {source} is not a valid SVG file")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        target = out / f"lora-studio-{size}.png"
        if not image.save(str(target)):
            raise SystemExit(f"error: could not write {target}")
        written.append(target)
    return written


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    for path in render():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
