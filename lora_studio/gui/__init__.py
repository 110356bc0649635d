"""The desktop app (PySide6). It only adapts ``lora_studio.core``: every decision lives in the core.

Start it with ``lora-studio`` (or ``lora-studio gui``). Importing this package imports nothing heavy;
torch and transformers are imported by workers after the window is on screen.
"""
