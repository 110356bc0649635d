import subprocess
import sys
import textwrap


def test_core_imports_without_pyside6_and_without_torch():
    """The core must import with Qt blocked, and importing it must not pull in torch (start-up)."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PySide6", "pyqtgraph", "shiboken6"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import pkgutil, importlib, lora_studio.core as core
        # modules that exist to drive heavy libraries; the rest of the core imports them lazily
        lazy_only = {"lora_studio.core.train.trainer", "lora_studio.core.train.offload"}
        names = [m.name for m in pkgutil.walk_packages(core.__path__, "lora_studio.core.")]
        assert "lora_studio.core.train.engine" in names, names
        for name in names:
            if name not in lazy_only:
                importlib.import_module(name)
        import lora_studio.cli
        heavy = [m for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets") if m in sys.modules]
        assert not heavy, heavy
        for name in lazy_only & set(names):
            importlib.import_module(name)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
