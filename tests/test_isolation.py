"""No test touches the user's settings, runs or cache: where every location points during tests."""

import os
from pathlib import Path

import user_files

from lora_studio.core import paths


def _real_home_locations() -> list[Path]:
    home = Path(os.path.expanduser("~"))
    return user_files.user_locations({"HOME": str(home)})


def test_every_app_location_points_into_a_temporary_folder(tmp_path, qapp):
    from lora_studio.gui.app import settings

    for location in (paths.runs_dir(), paths.config_dir(), Path(settings().fileName())):
        assert location.is_relative_to(tmp_path), location
    real = _real_home_locations()
    assert not any(paths.cache_dir().is_relative_to(r) for r in real)


def test_even_without_our_overrides_qt_and_platformdirs_write_to_a_sandbox(monkeypatch, qapp):
    """A code path that forgot ``LORA_STUDIO_SETTINGS`` or ``paths`` still cannot reach the real home."""
    from PySide6.QtCore import QSettings

    for name in (
        "LORA_STUDIO_SETTINGS",
        "LORA_STUDIO_RUNS_DIR",
        "LORA_STUDIO_CONFIG_DIR",
        "LORA_STUDIO_CACHE_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    sandbox = Path(os.environ["XDG_CONFIG_HOME"]).parent
    default = Path(QSettings("lora-studio", "LoRA Studio").fileName())
    for location in (default, paths.runs_dir(), paths.config_dir(), paths.cache_dir()):
        assert location.is_relative_to(sandbox), location
    assert not any(default.is_relative_to(r.parent) for r in _real_home_locations())


def test_the_session_check_sees_a_file_created_changed_or_deleted(tmp_path):
    root = tmp_path / "lora-studio"
    root.mkdir()
    (root / "kept.conf").write_text("a")
    (root / "gone.conf").write_text("b")
    before = user_files.snapshot([root, tmp_path / "absent"])
    (root / "new.ini").write_text("c")
    (root / "kept.conf").write_text("a, longer")
    (root / "gone.conf").unlink()
    found = user_files.changes(before, user_files.snapshot([root, tmp_path / "absent"]))
    assert f"created {root / 'new.ini'}" in found and f"deleted {root / 'gone.conf'}" in found
    assert f"changed {root / 'kept.conf'}" in found
    assert user_files.changes(before, before) == []
