"""The desktop app (PySide6). It only adapts ``lora_studio.core``: every decision lives in the core.

Start it with ``lora-studio`` (or ``lora-studio gui``). Importing this package imports nothing heavy
(QtCore, to guard against a bug of the Qt bindings: ``qt_fixes.py``); torch and transformers are
imported by workers after the window is on screen.
"""

from lora_studio.gui.qt_fixes import guard_signal_emit_refcount

guard_signal_emit_refcount()
