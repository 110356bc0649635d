"""The start-up display check (core/display_check.py): Qt's xcb plugin and its system libraries.

A minimal Linux desktop may lack libraries that PySide6's X11 plugin links (libxcb-cursor0,
libxcb-icccm4, ...); Qt then aborts with SIGABRT and a misleading message. The check runs ldd on the
plugin before Qt starts and prints one line with the packages to install. A missing library is
reproduced without uninstalling anything: a copy of ``libqxcb.so`` alone in a temporary folder
cannot find its Qt libraries (its RUNPATH is ``$ORIGIN/../../lib``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lora_studio.cli import gui as gui_cli
from lora_studio.core import display_check, doctor
from lora_studio.core.display_check import (
    MISSING_LIBRARIES,
    NO_DISPLAY,
    PACKAGES,
    DisplayCheck,
    check_display,
    find_plugin,
    missing_libraries,
    packages_for,
    qt_platform,
)

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="Qt's X11 (xcb) platform is checked on Linux only")
ROOT = Path(__file__).resolve().parents[1]


def _real_plugin() -> Path:
    pyside = display_check.pyside6_dir()
    plugin = pyside / "Qt" / "plugins" / "platforms" / "libqxcb.so" if pyside else None
    if not LINUX or plugin is None or not plugin.is_file():
        pytest.skip("PySide6's X11 plugin (libqxcb.so) exists only on Linux")
    return plugin


def _ldd_or_skip() -> None:
    if shutil.which("ldd") is None:
        pytest.skip("ldd is not on PATH: the check then reports 'not checked' and lets Qt try")


def _fake_plugin(tmp_path: Path) -> dict[str, str]:
    """An env whose QT_PLUGIN_PATH holds a libqxcb.so (contents irrelevant: ldd is injected)."""
    (tmp_path / "qt" / "platforms").mkdir(parents=True)
    (tmp_path / "qt" / "platforms" / "libqxcb.so").write_bytes(b"")
    return {"DISPLAY": ":0", "QT_PLUGIN_PATH": str(tmp_path / "qt")}


def _ldd(*missing: str, found: tuple[str, ...] = ("libc.so.6",)) -> str:
    lines = [f"\t{name} => /lib/x86_64-linux-gnu/{name} (0x00007f0000000000)" for name in found]
    lines += [f"\t{name} => not found" for name in missing]
    return "\tlinux-vdso.so.1 (0x00007ffd00000000)\n" + "\n".join(lines) + "\n"


# -- which platform, which display -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "system", "platform"),
    [
        ({}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": ""}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "xcb"}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "xcb:dpi=96"}, "linux", "xcb"),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", "offscreen"),
        ({"QT_QPA_PLATFORM": "wayland;xcb"}, "linux", "wayland"),
        ({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, "linux", "wayland"),
        ({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "x11"}, "linux", "xcb"),
        ({"XDG_SESSION_TYPE": "wayland"}, "linux", "xcb"),  # no compositor to talk to
        (
            {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland", "QT_QPA_PLATFORM": "xcb"},
            "linux",
            "xcb",
        ),
        ({}, "darwin", "native"),
        ({}, "win32", "native"),
    ],
)
def test_the_platform_qt_will_pick(env, system, platform):
    assert qt_platform(env, system) == platform


def test_platforms_other_than_xcb_are_not_checked():
    def no_ldd(path):
        raise AssertionError("ldd must not run")

    for env, system in (
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux"),
        ({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}, "linux"),
        ({}, "darwin"),
    ):
        found = check_display(env, system=system, ldd=no_ldd)
        assert found.ok and found.problem == "" and found.fix == ""


def test_no_display_says_where_to_run_it_and_that_the_command_line_works():
    found = check_display({}, system="linux")  # DISPLAY and WAYLAND_DISPLAY unset
    assert not found.ok and found.problem == NO_DISPLAY
    assert found.message.startswith("LoRA Studio cannot open its window: no display — run it from a desktop")
    assert "set DISPLAY" in found.message and "lora-studio train" in found.message
    assert "\n" not in found.message


def test_wayland_socket_without_x11_display_suggests_the_wayland_platform():
    found = check_display({"WAYLAND_DISPLAY": "wayland-0"}, system="linux")
    assert not found.ok and found.problem == NO_DISPLAY and "QT_QPA_PLATFORM=wayland" in found.fix


# -- soname -> package ------------------------------------------------------------------------------


def test_missing_libraries_become_one_line_with_the_apt_and_dnf_commands(tmp_path):
    env = _fake_plugin(tmp_path)
    report = _ldd("libxcb-cursor.so.0", "libxcb-icccm.so.4")
    found = check_display(env, system="linux", ldd=lambda path: report, dlopen=lambda name: True)
    assert not found.ok and found.problem == MISSING_LIBRARIES
    assert found.missing == ("libxcb-cursor.so.0", "libxcb-icccm.so.4")
    assert found.apt == "sudo apt-get install libxcb-cursor0 libxcb-icccm4"
    assert found.dnf == "sudo dnf install xcb-util-cursor xcb-util-wm"
    assert found.plugin == str(tmp_path / "qt" / "platforms" / "libqxcb.so")
    assert found.message == (
        "LoRA Studio cannot open its window: Qt's X11 (xcb) platform plugin needs libxcb-cursor.so.0, "
        "libxcb-icccm.so.4 — install them with: sudo apt-get install libxcb-cursor0 libxcb-icccm4 "
        "(Fedora: sudo dnf install xcb-util-cursor xcb-util-wm)"
    )


@pytest.mark.parametrize(
    ("soname", "debian", "fedora"),
    [
        ("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
        ("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
        ("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
        ("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
        ("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
        ("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
        ("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
        ("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
        ("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
        ("libxcb-xinput.so.0", "libxcb-xinput0", "libxcb"),
        ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
        ("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
        ("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
        ("libEGL.so.1", "libegl1", "libglvnd-egl"),
        ("libGL.so.1", "libgl1", "libglvnd-glx"),
        ("libOpenGL.so.0", "libopengl0", "libglvnd-opengl"),
        ("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
        ("libdbus-1.so.3", "libdbus-1-3", "dbus-libs"),
        ("libglib-2.0.so.0", "libglib2.0-0", "glib2"),
        ("libSM.so.6", "libsm6", "libSM"),
        ("libICE.so.6", "libice6", "libICE"),
    ],
)
def test_each_library_maps_to_its_debian_and_fedora_package(soname, debian, fedora):
    assert PACKAGES[soname] == (debian, fedora)


def test_packages_are_listed_once_and_unknown_libraries_are_named():
    debian, fedora, unknown = packages_for(
        ["libxcb-shape.so.0", "libxcb-xkb.so.1", "libxcb-randr.so.0", "libfoo.so.3"]
    )
    assert debian == ["libxcb-shape0", "libxcb-xkb1", "libxcb-randr0"]
    assert fedora == ["libxcb"]
    assert unknown == ["libfoo.so.3"]


def test_an_unknown_library_is_named_with_how_to_find_its_package(tmp_path):
    report = _ldd("libxcb-keysyms.so.1", "libfoo.so.3")
    found = check_display(_fake_plugin(tmp_path), system="linux", ldd=lambda path: report)
    assert found.apt == "sudo apt-get install libxcb-keysyms1"
    assert "libfoo.so.3" in found.detail and "package that provides libfoo.so.3" in found.fix
    assert "\n" not in found.message


def test_xcb_cursor_that_qt_only_dlopens_is_checked_too(tmp_path):
    """Before Qt linked libxcb-cursor it dlopened it: not in ldd's list, still required."""
    tried = []

    def dlopen(name):
        tried.append(name)
        return False

    found = check_display(_fake_plugin(tmp_path), system="linux", ldd=lambda path: _ldd(), dlopen=dlopen)
    assert tried == ["libxcb-cursor.so.0"]
    assert not found.ok and found.missing == ("libxcb-cursor.so.0",)
    assert found.apt == "sudo apt-get install libxcb-cursor0"
    # linked (found or not) means ldd already answered: no second look
    linked = check_display(
        _fake_plugin(tmp_path / "b"),
        system="linux",
        ldd=lambda path: _ldd(found=("libxcb-cursor.so.0",)),
        dlopen=lambda name: pytest.fail("no dlopen when ldd lists it"),
    )
    assert linked.ok and linked.checked


def test_missing_qt_libraries_mean_reinstall_pyside6_not_apt():
    _real_plugin()  # PySide6's own plugin is the one found: the cure is reinstalling PySide6
    report = _ldd("libQt6XcbQpa.so.6", "libQt6Gui.so.6")
    found = check_display({"DISPLAY": ":0"}, system="linux", ldd=lambda path: report, dlopen=lambda n: True)
    assert not found.ok and found.apt == "" and found.dnf == ""
    assert "libQt6XcbQpa.so.6, libQt6Gui.so.6 of PySide6's own Qt" in found.detail
    assert found.fix.startswith("reinstall PySide6: ")
    assert "-m pip install --force-reinstall PySide6-Essentials" in found.fix


def test_missing_ldd_or_a_broken_check_never_blocks_the_window(tmp_path, monkeypatch):
    env = _fake_plugin(tmp_path)
    monkeypatch.setattr(display_check.shutil, "which", lambda name: None)
    no_ldd = check_display(env, system="linux")
    assert no_ldd.ok and not no_ldd.checked and "ldd is not installed" in no_ldd.detail

    def crash(path):
        raise RuntimeError("simulated")

    crashed = check_display(env, system="linux", ldd=crash)
    assert crashed.ok and not crashed.checked and "simulated" in crashed.detail


def test_missing_libraries_parses_real_ldd_output(tmp_path):
    _ldd_or_skip()
    copy = tmp_path / "platforms" / "libqxcb.so"
    copy.parent.mkdir()
    shutil.copy(_real_plugin(), copy)
    assert missing_libraries(display_check.run_ldd(copy))[:3] == [
        "libQt6XcbQpa.so.6",
        "libQt6Gui.so.6",
        "libQt6Core.so.6",
    ]


# -- which plugin Qt loads --------------------------------------------------------------------------


def test_the_plugin_is_looked_for_where_qt_looks_first(tmp_path):
    real = _real_plugin()
    for folder in ("first", "platform-path"):
        (tmp_path / folder / "platforms").mkdir(parents=True)
        shutil.copy(real, tmp_path / folder / "platforms" / "libqxcb.so")
    # QT_PLUGIN_PATH comes before PySide6's own plugins ...
    plugin, source = find_plugin({"QT_PLUGIN_PATH": str(tmp_path / "first")})
    assert (plugin, source) == (tmp_path / "first" / "platforms" / "libqxcb.so", "QT_PLUGIN_PATH")
    # ... QT_QPA_PLATFORM_PLUGIN_PATH after them (Qt 6.12 measured: see the Qt cross-checks below)
    plugin, source = find_plugin(
        {"QT_QPA_PLATFORM_PLUGIN_PATH": str(tmp_path / "platform-path" / "platforms")}
    )
    assert (plugin, source) == (real, "PySide6")


def test_the_real_plugin_on_this_machine_can_load():
    """This machine has the libraries (README's apt-get line): the check must not stop the window."""
    plugin = _real_plugin()
    _ldd_or_skip()
    started = time.perf_counter()
    found = check_display({"DISPLAY": ":0"})
    assert found.ok and found.checked, found.message
    assert found.detail == "Qt can open windows on X11 (xcb)" and found.plugin == str(plugin)
    assert time.perf_counter() - started < 5  # tens of milliseconds, before every start of the window


# -- the app ----------------------------------------------------------------------------------------


def _app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("QT_QPA_PLATFORM", "QT_QPA_PLATFORM_PLUGIN_PATH", "QT_PLUGIN_PATH", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    env.pop("XDG_SESSION_TYPE", None)
    env.pop(display_check.SKIP_ENV, None)
    home = tmp_path / "home"
    env.update(
        {
            # nothing of the user's is touched even if the window did start
            "LORA_STUDIO_SETTINGS": str(home / "settings.ini"),
            "LORA_STUDIO_RUNS_DIR": str(home / "runs"),
            "LORA_STUDIO_CONFIG_DIR": str(home / "config"),
            "LORA_STUDIO_CACHE_DIR": str(home / "cache"),
            "LORA_STUDIO_NO_FIRST_RUN": "1",
            "XDG_CONFIG_HOME": str(home / "xdg-config"),
            "XDG_CACHE_HOME": str(home / "xdg-cache"),
            # Qt prints every plugin it looks at: any of that on stderr means Qt was started
            "QT_DEBUG_PLUGINS": "1",
            "DISPLAY": ":987",  # any value: nothing connects to it
        }
    )
    env.update(extra)
    return env


def _broken_plugin_folder(tmp_path: Path) -> Path:
    """A Qt plugin folder whose libqxcb.so cannot load: the copy cannot find its Qt libraries."""
    folder = tmp_path / "qt"
    (folder / "platforms").mkdir(parents=True)
    shutil.copy(_real_plugin(), folder / "platforms" / "libqxcb.so")
    return folder


@pytest.mark.parametrize("command", [[], ["gui"]], ids=["no-command", "gui"])
def test_the_app_prints_one_line_and_exits_1_instead_of_letting_qt_abort(tmp_path, command):
    _ldd_or_skip()
    folder = _broken_plugin_folder(tmp_path)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", *command],
        env=_app_env(tmp_path, QT_PLUGIN_PATH=str(folder)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # Qt never started: it would have printed plugin debug lines
    assert lines[0].startswith("LoRA Studio cannot open its window: Qt's X11 (xcb) platform plugin")
    assert "libQt6XcbQpa.so.6" in lines[0] and str(folder / "platforms" / "libqxcb.so") in lines[0]
    assert "unset QT_PLUGIN_PATH" in lines[0] and "reinstall PySide6" in lines[0]
    assert result.stdout == ""
    assert elapsed < 30  # Python and the CLI's imports only; no Qt, no window, no display connection
    assert not (tmp_path / "home").exists()


@linux_only
def test_the_app_without_a_display_says_so_in_one_line(tmp_path):
    env = _app_env(tmp_path)
    env.pop("DISPLAY")
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("LoRA Studio cannot open its window: no display — run it from a desktop session")


@linux_only
def test_the_check_can_be_switched_off_and_offscreen_needs_none(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # what the tests and --startup-check use
    assert gui_cli.display_problem() is None
    monkeypatch.delenv("QT_QPA_PLATFORM")
    assert gui_cli.display_problem().startswith("LoRA Studio cannot open its window: no display")
    monkeypatch.setenv(display_check.SKIP_ENV, "1")
    assert gui_cli.display_problem() is None


_QT_START = textwrap.dedent(
    """
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # Qt aborts: no core file
    from PySide6.QtGui import QGuiApplication
    QGuiApplication([])
    """
)


def test_qt_itself_aborts_with_a_broken_plugin_in_qt_plugin_path(tmp_path):
    """The situation the check reports is real: without it, Qt kills the process."""
    folder = _broken_plugin_folder(tmp_path)
    env = _app_env(tmp_path, QT_PLUGIN_PATH=str(folder))
    env.pop("QT_DEBUG_PLUGINS")
    result = subprocess.run(
        [sys.executable, "-c", _QT_START], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and 'Could not load the Qt platform plugin "xcb"' in result.stderr


def test_qt_prefers_its_own_plugin_to_one_in_qt_qpa_platform_plugin_path(tmp_path):
    """Why the check does not stop the app over a broken copy there: Qt loads PySide6's own."""
    real = _real_plugin()
    folder = _broken_plugin_folder(tmp_path)
    env = _app_env(tmp_path, QT_QPA_PLATFORM_PLUGIN_PATH=str(folder / "platforms"))
    result = subprocess.run(
        [sys.executable, "-c", _QT_START], env=env, capture_output=True, text=True, timeout=120
    )
    loaded = [line for line in result.stderr.splitlines() if "loaded library" in line and "libqxcb" in line]
    assert loaded and all(str(real) in line for line in loaded), result.stderr[-3000:]
    assert check_display(
        {"DISPLAY": ":987", "QT_QPA_PLATFORM_PLUGIN_PATH": str(folder / "platforms")}
    ).plugin == str(real)


# -- doctor and the System check dialog -------------------------------------------------------------


def _only_fast_checks(monkeypatch):
    for name in (
        "_torch",
        "_gpus",
        "_bf16",
        "_bitsandbytes",
        "_libraries",
        "_disk",
        "_default_model",
        "_llama_cpp",
    ):
        monkeypatch.setattr(doctor, name, lambda: [])


def test_doctor_runs_the_display_check(monkeypatch):
    _only_fast_checks(monkeypatch)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert [(c.name, c.status) for c in doctor.run_checks()] == [("Python", "ok"), ("display", "ok")]


@linux_only
def test_doctor_warns_without_a_display_and_the_machine_can_still_train(monkeypatch):
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    [check] = doctor._display()
    assert check.status == doctor.WARNING and check.detail.startswith("no display")
    assert "set DISPLAY" in check.fix and "lora-studio train" in check.fix
    assert doctor.can_train([check])


def test_doctor_warns_with_the_packages_to_install(monkeypatch):
    found = DisplayCheck(
        ok=False,
        platform="xcb",
        detail="Qt's X11 (xcb) platform plugin needs libxcb-keysyms.so.1",
        fix="install them with: sudo apt-get install libxcb-keysyms1 (Fedora: sudo dnf install xcb-util-keysyms)",
        problem=MISSING_LIBRARIES,
        missing=("libxcb-keysyms.so.1",),
        apt="sudo apt-get install libxcb-keysyms1",
        dnf="sudo dnf install xcb-util-keysyms",
    )
    monkeypatch.setattr(display_check, "check_display", lambda: found)
    [check] = doctor._display()
    assert check.status == doctor.WARNING and "libxcb-keysyms.so.1" in check.detail
    assert "the command line works" in check.detail and "sudo apt-get install libxcb-keysyms1" in check.fix


@linux_only
def test_doctor_says_which_platform_is_fine(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "wayland")
    assert doctor._display() == [doctor.Check("display", doctor.OK, "Qt opens windows on Wayland")]


def test_the_system_check_dialog_shows_the_display_line(qtbot, monkeypatch):
    from lora_studio.gui.dialogs import system_check

    _only_fast_checks(monkeypatch)
    monkeypatch.setattr(system_check.jobs, "ensure_libraries", lambda: None)  # no torch needed here
    dialog = system_check.SystemCheckDialog()
    qtbot.addWidget(dialog)
    with qtbot.waitSignal(dialog.finished_checks, timeout=60_000):
        dialog.start()
    assert [check.name for check in dialog.checks] == ["Python", "display"]
    assert "display" in dialog.report()


@linux_only
def test_setup_check_prints_the_same_line_as_a_warning_and_succeeds(tmp_path):
    env = _app_env(tmp_path)
    env.pop("DISPLAY")
    result = subprocess.run(
        [sys.executable, "-c", "from lora_studio.setup_check import display_warning; display_warning()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("set-up: WARNING: LoRA Studio cannot open its window: no display")
