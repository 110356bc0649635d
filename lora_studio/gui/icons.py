"""Line icons drawn from small inline SVGs, tinted for the current theme.

Inline paths (our own drawings, 24×24 grid) rather than icon files: nothing to package, and a
page that brings a new icon adds one entry here.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QRectF, QSize, Qt
from PySide6.QtGui import QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

from lora_studio.core.paths import resource_path

_SHAPES = {
    "model": '<path d="M12 2.5 3.5 7v10l8.5 4.5 8.5-4.5V7z"/><path d="M3.5 7 12 11.5 20.5 7"/>'
    '<path d="M12 11.5v10"/>',
    "data": '<ellipse cx="12" cy="5.5" rx="7.5" ry="3"/><path d="M4.5 5.5v13c0 1.7 3.4 3 7.5 3s7.5-1.3 '
    '7.5-3v-13"/><path d="M4.5 12c0 1.7 3.4 3 7.5 3s7.5-1.3 7.5-3"/>',
    "train": '<path d="M3.5 3.5v17h17"/><path d="m7 15.5 4-5 3 3 5.5-7"/>',
    "chat": '<path d="M4 5.5h16v10H9l-5 4z"/>',
    "export": '<path d="M12 3.5v11"/><path d="m7.5 8 4.5-4.5L16.5 8"/><path d="M4.5 14.5v5h15v-5"/>',
    "evaluate": '<circle cx="12" cy="12" r="8.5"/><path d="m8 12.3 2.8 2.8 5.2-5.6"/>',
    "runs": '<path d="M4 6h16M4 12h16M4 18h10"/>',
    "theme": '<circle cx="12" cy="12" r="8.5"/><path d="M12 3.5a8.5 8.5 0 0 0 0 17z" fill="COLOR"/>',
}


def _svg(name: str, colour: str) -> bytes:
    body = _SHAPES[name].replace("COLOR", colour)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" '
        f'stroke="{colour}" stroke-width="1.7" stroke-linecap="round" stroke-linejoin="round">'
        f"{body}</svg>"
    ).encode()


def pixmap(name: str, colour: str, size: int = 22, ratio: float = 2.0) -> QPixmap:
    renderer = QSvgRenderer(QByteArray(_svg(name, colour)))
    pix = QPixmap(int(size * ratio), int(size * ratio))
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    renderer.render(painter, QRectF(0, 0, size * ratio, size * ratio))
    painter.end()
    pix.setDevicePixelRatio(ratio)
    return pix


def icon(name: str, colour: str, active_colour: str | None = None, size: int = 22) -> QIcon:
    """An icon with its normal tint, and ``active_colour`` when checked (navigation buttons)."""
    result = QIcon()
    result.addPixmap(pixmap(name if name in _SHAPES else "runs", colour, size), QIcon.Mode.Normal)
    if active_colour:
        active = pixmap(name if name in _SHAPES else "runs", active_colour, size)
        result.addPixmap(active, QIcon.Mode.Normal, QIcon.State.On)
        result.addPixmap(active, QIcon.Mode.Active, QIcon.State.On)
    return result


ICON_SIZE = QSize(22, 22)
#: The PNG sizes packaging/render_icons.py draws from resources/icons/lora-studio.svg.
APP_ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)


def app_icon() -> QIcon:
    """The application icon (window, task bar, About): the rendered PNGs, each used at its own size
    so the 16 px one stays crisp, and the SVG for any other size. Empty if resources/ is missing."""
    result = QIcon()
    for size in APP_ICON_SIZES:
        png = resource_path("icons", "png", f"lora-studio-{size}.png")
        if png.is_file():
            result.addFile(str(png), QSize(size, size))
    svg = resource_path("icons", "lora-studio.svg")
    if result.isNull() and svg.is_file():
        result.addFile(str(svg))
    return result
