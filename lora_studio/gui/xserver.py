"""A virtual X display to look at the app's real windows: Xvfb + openbox, pictures from the server.

Offscreen rendering (``QWidget.grab()`` on the ``offscreen`` platform) draws widgets into an image
and never exercises what puts pixels on a screen, so the tests, the README screenshots and a
developer checking a change look at real windows through this module instead.

Screenshots are read from the X server's own framebuffer: Xvfb runs with ``-fbdir``, which keeps
the screen memory in a file (XWD format) that the server scans out — exactly what a monitor would
show. ``xwd -root`` (a GetImage request on the root window) is *not* used: on Xvfb 21 it returns
black for a window that overlaps another window of the same client — every dialog and menu over
the main window — while the framebuffer holds the painted pixels (``docs/real-display.md``).

Qt-free (numpy and the standard library only), so the test process can drive the app from outside.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The programs a real display needs, and the Debian package of each.
TOOLS = {"Xvfb": "xvfb", "openbox": "openbox", "xdotool": "xdotool", "xprop": "x11-utils"}
#: Qt's X11 platform plugin needs these beyond what a bare system has (``lora-studio doctor`` checks).
QT_XCB_PACKAGES = ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1")


def missing_tools() -> list[str]:
    """The programs of :data:`TOOLS` not on ``PATH``."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install_line() -> str:
    """The apt-get line that brings every missing tool (and Qt's X11 libraries)."""
    packages = sorted({TOOLS[tool] for tool in missing_tools()} | set(QT_XCB_PACKAGES))
    return "apt-get install -y " + " ".join(packages)


class DisplayError(RuntimeError):
    """The virtual display could not start (the message says which program and why)."""


@dataclass
class VirtualDisplay:
    """Xvfb (with its framebuffer in a file) and the openbox window manager on a free display number.

    Use as a context manager; :meth:`env` gives the variables a program needs to open its windows
    there, :meth:`screenshot` what the screen shows now.
    """

    width: int = 1600
    height: int = 1000
    window_manager: bool = True

    def __post_init__(self) -> None:
        self.display = ""
        self._dir = Path(tempfile.mkdtemp(prefix="lora-studio-xvfb-"))
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> VirtualDisplay:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def framebuffer(self) -> Path:
        return self._dir / "Xvfb_screen0"

    def start(self, timeout_s: float = 30) -> None:
        missing = missing_tools()
        if missing:
            raise DisplayError(f"missing {', '.join(missing)}: {install_line()}")
        read_end, write_end = os.pipe()
        command = [
            "Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{self.width}x{self.height}x24",
            "-fbdir", str(self._dir), "-nolisten", "tcp", "-noreset",
        ]  # fmt: skip
        server = subprocess.Popen(
            command, pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        os.close(write_end)
        self._procs.append(server)
        number = _read_display_number(read_end, server, timeout_s)
        self.display = f":{number}"
        if self.window_manager:
            self._procs.append(
                subprocess.Popen(
                    ["openbox", "--sm-disable"],
                    env=self.env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self._wait_for_window_manager(timeout_s)

    def _wait_for_window_manager(self, timeout_s: float) -> None:
        """Until openbox has claimed the screen (it then manages, decorates and stacks windows)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = subprocess.run(
                ["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"], env=self.env(), capture_output=True, text=True
            )
            if "window id" in found.stdout:
                return
            if self._procs[-1].poll() is not None:
                raise DisplayError(f"openbox exited with code {self._procs[-1].returncode}")
            time.sleep(0.05)
        raise DisplayError(f"openbox did not start within {timeout_s:.0f} s")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) set up for this display and no other."""
        env = dict(os.environ if base is None else base)
        env["DISPLAY"] = self.display
        for name in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "XAUTHORITY"):
            env.pop(name, None)
        return env

    def screenshot(self) -> np.ndarray:
        """What the screen shows now: an (height, width, 3) uint8 RGB array."""
        return read_xwd(self.framebuffer)

    def xdotool(self, *args: str) -> str:
        """Run xdotool on this display (real X input events, as a person's mouse and keyboard make)."""
        done = subprocess.run(["xdotool", *args], env=self.env(), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise DisplayError(f"xdotool {' '.join(args)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """Terminate ``proc`` if it still runs; kill it when it does not end within ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _read_display_number(fd: int, server: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Xvfb writes the display number it chose to ``-displayfd`` once it accepts connections."""
    import select

    text = b""
    deadline = time.monotonic() + timeout_s
    try:
        while not text.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise DisplayError(f"Xvfb did not start within {timeout_s:.0f} s")
            chunk = os.read(fd, 64)
            if not chunk:
                error = server.stderr.read().decode(errors="replace")[-500:] if server.stderr else ""
                raise DisplayError(f"Xvfb exited ({server.wait()}): {error.strip()}")
            text += chunk
    finally:
        os.close(fd)
    return int(text.strip())


# -- images ----------------------------------------------------------------------------------------

_XWD_FIELDS = (
    "header_size", "file_version", "pixmap_format", "pixmap_depth", "pixmap_width", "pixmap_height",
    "xoffset", "byte_order", "bitmap_unit", "bitmap_bit_order", "bitmap_pad", "bits_per_pixel",
    "bytes_per_line", "visual_class", "red_mask", "green_mask", "blue_mask", "bits_per_rgb",
    "colormap_entries", "ncolors",
)  # fmt: skip
_XWD_COLOR_BYTES = 12


def read_xwd(path: Path) -> np.ndarray:
    """Decode a 24/32-bit TrueColor XWD file (what Xvfb keeps in ``-fbdir``) to RGB."""
    data = Path(path).read_bytes()
    header = dict(zip(_XWD_FIELDS, struct.unpack(">20I", data[:80]), strict=True))
    if header["header_size"] > len(data) or header["file_version"] != 7:
        header = dict(zip(_XWD_FIELDS, struct.unpack("<20I", data[:80]), strict=True))
    if header["bits_per_pixel"] != 32 or header["pixmap_format"] != 2:
        raise ValueError(f"{path}: only 32-bit ZPixmap XWD files are read (got {header})")
    width, height, stride = header["pixmap_width"], header["pixmap_height"], header["bytes_per_line"]
    offset = header["header_size"] + header["ncolors"] * _XWD_COLOR_BYTES
    dtype = "<u4" if header["byte_order"] == 0 else ">u4"
    rows = np.frombuffer(data, dtype=np.uint8, count=stride * height, offset=offset).reshape(height, stride)
    pixels = rows[:, : width * 4].copy().view(dtype).reshape(height, width)
    channels = []
    for mask in (header["red_mask"], header["green_mask"], header["blue_mask"]):
        shift = (mask & -mask).bit_length() - 1
        channels.append(((pixels & mask) >> shift).astype(np.uint8))
    return np.stack(channels, axis=-1)


def write_png(path: Path, image: np.ndarray) -> Path:
    """Save an RGB array as PNG (no imaging library needed)."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].astype(np.uint8).tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def crop(image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    """``rect`` = (x, y, width, height) in screen pixels, clipped to the screen."""
    x, y, w, h = rect
    return image[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)]


def unpainted_reasons(image: np.ndarray, *, title_band: int = 0) -> list[str]:
    """Why ``image`` (a window's pixels) does not look painted; empty when it does.

    A window that was mapped but never drawn shows one colour (black on X11 without a compositor,
    or whatever was below). A painted window has several colours, is not mostly black, not almost
    entirely one background colour, and — when ``title_band`` rows are given — has text in its top
    rows: both dark and light pixels there.
    """
    reasons: list[str] = []
    if image.size == 0:
        return ["the window has no pixels on screen"]
    pixels = image.reshape(-1, 3).astype(np.int32)
    luminance = pixels @ np.array([299, 587, 114]) // 1000
    if int(np.ptp(pixels, axis=0).max()) < 16:
        reasons.append(f"uniform: every pixel is about rgb{tuple(int(v) for v in pixels[0])}")
    black = float((luminance < 12).mean())
    if black > 0.6:
        reasons.append(f"mostly black: {black:.0%} of the pixels")
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    _, counts = np.unique(packed, return_counts=True)
    top = float(counts.max() / packed.size)
    if top > 0.985:
        reasons.append(f"mostly background: {top:.1%} of the pixels are one colour")
    if title_band:
        band = luminance.reshape(image.shape[:2])[: min(title_band, image.shape[0])]
        spread = int(band.max()) - int(band.min()) if band.size else 0
        if spread < 90:
            reasons.append(f"no readable text in the top {title_band} rows (contrast {spread} of 255)")
    return reasons


# -- Wayland ---------------------------------------------------------------------------------------


@dataclass
class HeadlessWayland:
    """A headless Weston compositor (software rendering) for the same check on Wayland.

    Wayland hides window positions from clients, so there is nothing to aim a click at: the check is
    what the whole output shows, taken by ``weston-screenshooter`` (Weston lets it only with
    ``--debug``).
    """

    width: int = 1400
    height: int = 900

    def __post_init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="lora-studio-weston-"))
        self._dir.chmod(0o700)  # XDG_RUNTIME_DIR must be private
        self.socket = "wayland-lora-studio"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing_tools() -> list[str]:
        return [tool for tool in ("weston", "weston-screenshooter") if shutil.which(tool) is None]

    def __enter__(self) -> HeadlessWayland:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30) -> None:
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self._dir))
        self._proc = subprocess.Popen(
            ["weston", "--backend=headless-backend.so", "--use-pixman", f"--socket={self.socket}",
             f"--width={self.width}", f"--height={self.height}", "--idle-time=0", "--debug"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not (self._dir / self.socket).exists():
            if self._proc.poll() is not None:
                raise DisplayError(f"weston exited with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise DisplayError(f"weston did not start within {timeout_s:.0f} s")
            time.sleep(0.05)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(XDG_RUNTIME_DIR=str(self._dir), WAYLAND_DISPLAY=self.socket, QT_QPA_PLATFORM="wayland")
        env.pop("DISPLAY", None)
        return env

    def screenshot(self) -> Path:
        """A PNG of the whole output, as Weston composited it."""
        shots = self._dir / "shots"
        shutil.rmtree(shots, ignore_errors=True)
        shots.mkdir()
        subprocess.run(["weston-screenshooter"], env=self.env(), cwd=shots, check=True, timeout=60)
        [path] = shots.glob("*.png")
        return path

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        shutil.rmtree(self._dir, ignore_errors=True)
