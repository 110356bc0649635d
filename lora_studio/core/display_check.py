"""Can Qt open a window here? Checked before Qt starts, so a missing system library is one clear line.

PySide6's X11 platform plugin (``libqxcb.so``) links system libraries that a minimal Linux desktop
may lack (``libxcb-cursor0``, ``libxcb-icccm4``, ``libxcb-keysyms1``, ...). When one is missing, Qt
does not fail gracefully: it prints a generic "Could not load the Qt platform plugin xcb" and
aborts the process (SIGABRT, exit 134), often naming a library that is not even the one missing.
Running ``ldd`` on the plugin first (tens of milliseconds) tells exactly which libraries are
missing and so which packages to install; the GUI command prints that as one line and exits 1
instead of letting Qt abort, and ``lora-studio doctor`` reports it as a warning.

This module is Qt-free (it must not import PySide6: the core is imported with Qt blocked in
tests): PySide6's folder is found through ``importlib.util.find_spec`` / ``importlib.metadata``.
A check that cannot run (no ``ldd``, plugin not found, anything unexpected) never blocks start-up:
it reports ``ok`` with ``checked=False`` and Qt gets to try.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Set (to anything but "" or "0") to start the window without this check (a false alarm).
SKIP_ENV = "LORA_STUDIO_NO_DISPLAY_CHECK"
PLUGIN_NAME = "libqxcb.so"
#: Qt >= 6.5 refuses xcb without it; older PySide6 builds dlopen it instead of linking it.
XCB_CURSOR = "libxcb-cursor.so.0"

NO_DISPLAY = "no display"
MISSING_LIBRARIES = "missing libraries"

#: soname -> (Debian/Ubuntu package, Fedora package) for the libraries libqxcb.so and the Qt
#: libraries it loads need from the system (ldd of PySide6 6.12's plugin, packages from dpkg -S).
PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-xinput.so.0": ("libxcb-xinput0", "libxcb"),
    "libxcb-xinerama.so.0": ("libxcb-xinerama0", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libXau.so.6": ("libxau6", "libXau"),
    "libXdmcp.so.6": ("libxdmcp6", "libXdmcp"),
    "libSM.so.6": ("libsm6", "libSM"),
    "libICE.so.6": ("libice6", "libICE"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libGLdispatch.so.0": ("libglvnd0", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libpng16.so.16": ("libpng16-16", "libpng"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libzstd.so.1": ("libzstd1", "libzstd"),
}

#: Libraries that come with PySide6 itself (its Qt/lib folder): missing means a broken install.
_BUNDLED = re.compile(r"^lib(Qt6|icu|pyside6|shiboken6)")
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$", re.MULTILINE)
_LISTED = re.compile(r"^\s*(\S+)\s+=>", re.MULTILINE)


@dataclass(frozen=True)
class DisplayCheck:
    """What the check found.

    ``ok`` False means Qt would abort: the GUI prints ``message`` and exits 1 instead. ``checked``
    False means the check could not run (``detail`` says why) and Qt is left to try.
    """

    ok: bool
    #: the Qt platform that will be used: "xcb", "wayland", "offscreen", ... ("native" off Linux)
    platform: str
    #: what was found, for a person: the whole finding when ok, the cause when not
    detail: str
    #: what to do ("" when ok)
    fix: str = ""
    #: "" when ok, else NO_DISPLAY or MISSING_LIBRARIES
    problem: str = ""
    #: the sonames ldd could not resolve (plus libxcb-cursor.so.0 when Qt could not dlopen it)
    missing: tuple[str, ...] = ()
    #: "sudo apt-get install ..." for the missing system libraries ("" when none are known)
    apt: str = ""
    #: "sudo dnf install ..." for the same
    dnf: str = ""
    #: the plugin file that was checked
    plugin: str = ""
    checked: bool = True

    @property
    def message(self) -> str:
        """One line a person can act on."""
        if self.ok:
            return self.detail
        return f"LoRA Studio cannot open its window: {self.detail} — {self.fix}"


class _Unavailable(Exception):
    """The check cannot run here (no ldd, unreadable output): not a reason to stop Qt trying."""


def qt_platform(env: Mapping[str, str] | None = None, system: str | None = None) -> str:
    """The platform plugin Qt will pick, by the same rules Qt applies when the app does not say.

    ``QT_QPA_PLATFORM`` wins (its first entry: ``"wayland;xcb"`` means wayland); unset on Linux,
    Qt picks wayland in a Wayland session (``XDG_SESSION_TYPE=wayland`` with ``WAYLAND_DISPLAY``)
    and xcb otherwise. Off Linux the answer is "native": there is no xcb to check.
    """
    env = os.environ if env is None else env
    system = sys.platform if system is None else system
    if not system.startswith("linux"):
        return "native"
    chosen = env.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        return re.split(r"[;:]", chosen, maxsplit=1)[0].strip() or "xcb"
    if env.get("WAYLAND_DISPLAY") and env.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return "wayland"
    return "xcb"


def pyside6_dir() -> Path | None:
    """PySide6's package folder, found without importing PySide6 (the core stays Qt-free)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        located = Path(str(distribution("PySide6-Essentials").locate_file("PySide6")))
    except (PackageNotFoundError, OSError):
        return None
    return located if located.is_dir() else None


def plugin_dirs(env: Mapping[str, str] | None = None) -> list[tuple[Path, str]]:
    """The folders Qt searches for its platform plugins, in Qt's order, each with where it came from.

    Qt (6.12) takes the first plugin with the "xcb" key in: each ``QT_PLUGIN_PATH`` entry's
    ``platforms/``, then its own plugins folder (PySide6's ``Qt/plugins/platforms``), then the
    application's folder; ``QT_QPA_PLATFORM_PLUGIN_PATH`` is only searched after those (measured:
    a broken copy there is ignored while PySide6's own plugin exists, whereas a broken copy in a
    ``QT_PLUGIN_PATH`` folder makes Qt abort).
    """
    env = os.environ if env is None else env
    found: list[tuple[Path, str]] = []
    for entry in env.get("QT_PLUGIN_PATH", "").split(os.pathsep):
        if entry.strip():
            found.append((Path(entry).expanduser() / "platforms", "QT_PLUGIN_PATH"))
    pyside = pyside6_dir()
    if pyside is not None:
        found.append((pyside / "Qt" / "plugins" / "platforms", "PySide6"))
    found.append((Path(os.path.realpath(sys.executable)).parent / "platforms", "application"))
    if env.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").strip():
        found.append((Path(env["QT_QPA_PLATFORM_PLUGIN_PATH"]).expanduser(), "QT_QPA_PLATFORM_PLUGIN_PATH"))
    return found


def find_plugin(env: Mapping[str, str] | None = None) -> tuple[Path, str] | None:
    """The ``libqxcb.so`` Qt will load and where its folder came from; None when there is none."""
    for folder, source in plugin_dirs(env):
        candidate = folder / PLUGIN_NAME
        if candidate.is_file():
            return candidate, source
    return None


def run_ldd(path: Path) -> str:
    """``ldd``'s report for ``path``, in this process's environment (``LD_LIBRARY_PATH`` included,
    as Qt's loader will see it)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        raise _Unavailable("ldd is not installed")
    try:
        done = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable(f"ldd failed: {exc}") from exc
    if done.returncode != 0 or "=>" not in done.stdout:
        raise _Unavailable(f"ldd could not read {path.name}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def can_dlopen(soname: str) -> bool:
    """Whether the dynamic loader finds ``soname`` the way Qt's ``dlopen`` would."""
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_libraries(ldd_output: str) -> list[str]:
    """The sonames ``ldd`` reported as "not found", in its order, without duplicates."""
    return list(dict.fromkeys(_NOT_FOUND.findall(ldd_output)))


def packages_for(sonames: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
    """(Debian/Ubuntu packages, Fedora packages, sonames with no known package) for system libraries."""
    debian: dict[str, None] = {}
    fedora: dict[str, None] = {}
    unknown = []
    for soname in sonames:
        if soname in PACKAGES:
            deb, rpm = PACKAGES[soname]
            debian[deb] = None
            fedora[rpm] = None
        else:
            unknown.append(soname)
    return list(debian), list(fedora), unknown


def check_display(
    env: Mapping[str, str] | None = None,
    *,
    system: str | None = None,
    ldd: Callable[[Path], str] = run_ldd,
    dlopen: Callable[[str], bool] = can_dlopen,
) -> DisplayCheck:
    """Whether Qt can open a window here, and if not the one line that says what to install.

    ``env`` (default ``os.environ``), ``system`` (default ``sys.platform``), ``ldd`` and ``dlopen``
    are injectable so tests can describe any machine. Never raises: a check that fails in an
    unexpected way returns ``ok`` with ``checked=False``.
    """
    env = os.environ if env is None else env
    try:
        return _check(env, system, ldd, dlopen)
    except _Unavailable as exc:
        return _unchecked(f"could not check Qt's X11 (xcb) plugin: {exc}")
    except Exception as exc:  # never stand between the user and the window over a bug in here
        return _unchecked(f"could not check Qt's X11 (xcb) plugin: {type(exc).__name__}: {exc}")


def _unchecked(detail: str) -> DisplayCheck:
    return DisplayCheck(ok=True, platform="xcb", detail=detail, checked=False)


def _check(
    env: Mapping[str, str], system: str | None, ldd: Callable[[Path], str], dlopen: Callable[[str], bool]
) -> DisplayCheck:
    platform = qt_platform(env, system)
    if platform == "native":
        return DisplayCheck(ok=True, platform=platform, detail="Qt uses the system's own windowing")
    if platform == "wayland":
        return DisplayCheck(ok=True, platform=platform, detail="Qt opens windows on Wayland")
    if platform != "xcb":
        return DisplayCheck(ok=True, platform=platform, detail=f"Qt uses the {platform!r} platform")
    if not env.get("DISPLAY", "").strip():
        return _no_display(env)
    located = find_plugin(env)
    if located is None:  # Qt may still find one where we did not look: let it try
        raise _Unavailable(f"{PLUGIN_NAME} not found in PySide6 or QT_PLUGIN_PATH")
    plugin, source = located
    report = ldd(plugin)
    missing = missing_libraries(report)
    if XCB_CURSOR not in _LISTED.findall(report) and not dlopen(XCB_CURSOR):
        missing.append(XCB_CURSOR)  # not linked, but Qt >= 6.5 dlopens it and refuses xcb without it
    if not missing:
        return DisplayCheck(
            ok=True, platform=platform, detail="Qt can open windows on X11 (xcb)", plugin=str(plugin)
        )
    return _missing(platform, plugin, source, missing)


def _no_display(env: Mapping[str, str]) -> DisplayCheck:
    cli = "`lora-studio train`, `chat`, `export` and the other commands work without one"
    if env.get("WAYLAND_DISPLAY", "").strip():
        detail = "no X11 display (DISPLAY is unset, WAYLAND_DISPLAY is set)"
        fix = f"start it with QT_QPA_PLATFORM=wayland, or set DISPLAY; {cli}"
    else:
        detail = "no display"
        fix = f"run it from a desktop session, or set DISPLAY (e.g. ssh -X, or DISPLAY=:0); {cli}"
    return DisplayCheck(ok=False, platform="xcb", detail=detail, fix=fix, problem=NO_DISPLAY)


def _missing(platform: str, plugin: Path, source: str, missing: list[str]) -> DisplayCheck:
    bundled = [s for s in missing if _BUNDLED.match(s)]
    system_libs = [s for s in missing if not _BUNDLED.match(s)]
    debian, fedora, unknown = packages_for(system_libs)
    apt = f"sudo apt-get install {' '.join(debian)}" if debian else ""
    dnf = f"sudo dnf install {' '.join(fedora)}" if fedora else ""
    causes, fixes = [], []
    if system_libs:
        causes.append(f"Qt's X11 (xcb) platform plugin needs {', '.join(system_libs)}")
        if apt:
            fixes.append(f"install them with: {apt} (Fedora: {dnf})")
        if unknown:
            fixes.append(
                f"install the package that provides {', '.join(unknown)} "
                "(find it with apt-file search, or dnf provides '*/NAME')"
            )
    if bundled:
        owner = "of PySide6's own Qt" if source == "PySide6" else f"(it was found through {source})"
        lead = "it also" if system_libs else f"Qt's X11 (xcb) platform plugin {plugin}"
        causes.append(f"{lead} cannot find {', '.join(bundled)} {owner}")
        if source in ("QT_PLUGIN_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH"):
            fixes.append(f"unset {source} (it points Qt at that plugin), or {_reinstall()}")
        else:
            fixes.append(_reinstall())
    return DisplayCheck(
        ok=False,
        platform=platform,
        detail="; ".join(causes),
        fix="; ".join(fixes),
        problem=MISSING_LIBRARIES,
        missing=tuple(missing),
        apt=apt,
        dnf=dnf,
        plugin=str(plugin),
    )


def _reinstall() -> str:
    if getattr(sys, "frozen", False):
        return "this bundle's Qt is incomplete: rebuild it with packaging/build.sh"
    try:
        from importlib.metadata import version

        pin = f"=={version('PySide6-Essentials')}"
    except Exception:
        pin = ""
    return f"reinstall PySide6: {sys.executable} -m pip install --force-reinstall PySide6-Essentials{pin}"
