"""Importing the libraries through the app prints nothing about bitsandbytes' optional ``kernels``.

On a CPU with AVX512-BF16, bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from
kernels-community: No module named 'kernels'…" at import, at every start of the app. The check
runs in a fresh interpreter that makes bitsandbytes believe the CPU has AVX512-BF16 (so the warning
is attempted on any machine), imports through the app's own helpers, and reads stderr; a control
without the app's filter shows that the warning would otherwise appear.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lora_studio.core.models import KERNELS_NOTICE

#: Runs first in the child: bitsandbytes' has_avx512bf16() answers True, whatever the CPU.
FORCE_AVX512_BF16 = """
import importlib.abc, importlib.machinery, sys

class ForceAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, ForceAvx512Bf16())
"""

#: After the import: another warning of the same bitsandbytes logger must still get through.
OTHER_WARNING = """
import logging
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another bitsandbytes warning")
"""


def stderr_of(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", FORCE_AVX512_BF16 + code + OTHER_WARNING],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def test_without_the_filter_bitsandbytes_would_print_the_kernels_warning():
    assert KERNELS_NOTICE in stderr_of("import bitsandbytes\n")


@pytest.mark.parametrize(
    "code",
    [
        "from lora_studio.gui.jobs import ensure_libraries\nensure_libraries()\n",  # every GUI job
        "from lora_studio.core.models import quiet_library_defaults\nquiet_library_defaults()\n",  # CLI
        "from lora_studio.cli import build_parser\nbuild_parser()\nimport peft\n",  # after the CLI starts
    ],
    ids=["gui-jobs", "engine", "cli-then-peft"],
)
def test_importing_through_the_app_prints_nothing_about_kernels(code):
    err = stderr_of(code)
    assert "kernels" not in err, err[-3000:]
    assert "another bitsandbytes warning" in err  # only that one message is dropped
