"""Run at the end of `make` set-up: say which torch build was installed and whether it can use the GPU.

A machine with an NVIDIA driver but a CPU-only torch trains 10-100x slower without any error, so
this is said loudly, with the command that fixes it. It also says when the window will not open
here (system libraries Qt's X11 plugin needs are missing, or there is no display), with the
packages to install: a warning only, since the command line works without a window.
"""

from __future__ import annotations

import shutil
import subprocess


def main() -> int:
    import torch

    cuda_build = torch.version.cuda
    has_driver = shutil.which("nvidia-smi") is not None
    if has_driver:
        try:
            has_driver = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            has_driver = False
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"set-up: torch {torch.__version__} (CUDA {cuda_build}) sees {names}")
    elif has_driver:
        print(
            f"set-up: WARNING: an NVIDIA GPU is present but torch {torch.__version__} cannot use it "
            f"({'CPU-only build' if not cuda_build else f'CUDA {cuda_build} build'}). Reinstall with e.g.\n"
            "  make clean-venv && make TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128' run"
        )
    else:
        print(f"set-up: torch {torch.__version__}, no NVIDIA GPU found: training runs on the CPU")
    display_warning()
    return 0


def display_warning() -> None:
    """Print the GUI's start-up line when the window could not open here; never fails the set-up."""
    try:
        from lora_studio.core.display_check import check_display

        found = check_display()
    except Exception:  # the check is advice; the install itself succeeded
        return
    if not found.ok:
        print(f"set-up: WARNING: {found.message}")


if __name__ == "__main__":
    raise SystemExit(main())
