"""Qt-free core of LoRA Studio: one package per stage of the user's path, on a shared base.

    base        errors, paths, faults, llamacpp  ←  atomic  ←  config  ←  cache, models, runs  ←  doctor
      ↑
    data        a user's file → conversations → tokens the model trains on
      ↑
    train       the engine: one run from a config to an adapter, streaming events
      ↑
    estimate    memory before anything loads    chat       talk to base and fine-tune
      ↑                                             ↑
    export      adapter, merged, GGUF, Modelfile     evaluate   scores with error bars

An arrow points from a layer to one it may import; nothing imports sideways or up, and there are no
circles (``tests/test_core_layers.py`` checks every import, lazy ones included). Nothing here
imports PySide6, pyqtgraph or ``lora_studio.gui``; heavy libraries (torch, transformers, peft,
bitsandbytes, datasets) are imported inside the functions that need them, so importing the core
stays cheap (``tests/test_core_is_qt_free.py``).
"""
