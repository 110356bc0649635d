"""Qt-free core of LoRA Studio.

Nothing under this package imports PySide6, pyqtgraph or ``lora_studio.gui``; heavy libraries
(torch, transformers, peft, bitsandbytes, datasets) are imported inside the functions that need
them so that importing the core stays cheap.
"""
