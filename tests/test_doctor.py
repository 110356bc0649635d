import json
import subprocess
import sys

from lora_studio.core import doctor


def test_doctor_on_this_machine_can_train_and_reports_every_area():
    result = subprocess.run(
        [sys.executable, "-m", "lora_studio", "doctor", "--json"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    names = {check["name"] for check in report["checks"]}
    assert {
        "Python",
        "torch",
        "GPU",
        "bf16",
        "bitsandbytes nf4",
        "bitsandbytes int8",
        "cache folder",
        "runs folder",
        "default model",
        "llama.cpp",
    } <= names
    assert report["can_train"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["bitsandbytes nf4"]["status"] == "ok"


def test_a_crashing_check_is_reported_as_a_problem(monkeypatch):
    def broken():
        raise RuntimeError("simulated")

    monkeypatch.setattr(doctor, "_python", broken)
    results = doctor.run_checks()
    assert results[0].status == doctor.PROBLEM and "simulated" in results[0].detail
    assert not doctor.can_train(results)


def test_gpu_driver_without_cuda_torch_is_a_problem_with_the_fix(monkeypatch):
    monkeypatch.setattr(doctor, "_nvidia_driver", lambda: "550.54")
    [check] = doctor._torch()
    assert check.status == doctor.PROBLEM and "cu1" in check.fix


def test_the_cpu_nf4_line_says_what_the_optional_kernels_package_would_add(monkeypatch):
    """bitsandbytes warns about `kernels` at import (the app drops that): doctor answers the question,
    in the nf4 line's detail and never as a warning."""
    import importlib.util

    import torch

    from lora_studio.core.models import import_bitsandbytes

    import_bitsandbytes()
    import bitsandbytes.functional as bnb_functional

    real_find_spec = importlib.util.find_spec

    def kernels_installed(installed: bool) -> None:
        def find_spec(name: str, *args):
            if name == "kernels":
                return object() if installed else None
            return real_find_spec(name, *args)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    monkeypatch.setattr(bnb_functional, "has_avx512bf16", lambda: True)
    kernels_installed(False)
    note = doctor._cpu_4bit_kernel()
    assert "optional `kernels` package" in note and "Hugging Face Hub" in note and "not needed" in note
    kernels_installed(True)
    assert "`kernels` is installed" in doctor._cpu_4bit_kernel()
    monkeypatch.setattr(bnb_functional, "has_avx512bf16", lambda: False)
    assert doctor._cpu_4bit_kernel().startswith("; no AVX512-BF16")
    monkeypatch.undo()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    by_name = {c.name: c for c in doctor._bitsandbytes()}
    nf4 = by_name["bitsandbytes nf4"]
    assert nf4.status == doctor.OK and "`kernels`" in nf4.detail, nf4
    assert "kernels" not in by_name["bitsandbytes int8"].detail


def test_doctor_reports_the_llama_cpp_verifier_without_failing_the_machine(monkeypatch):
    from llama_cpp_native import crashing_llama_cpp

    monkeypatch.setenv("LORA_STUDIO_LLAMA_CPP", "off")
    [check] = doctor._llama_cpp()
    assert check.status == doctor.OK and "turned off" in check.detail
    monkeypatch.delenv("LORA_STUDIO_LLAMA_CPP")
    with crashing_llama_cpp(monkeypatch):
        [check] = doctor._llama_cpp()
    assert check.status == doctor.WARNING and "SIGILL" in check.detail and "GGML_NATIVE=OFF" in check.detail
    assert "fall back to transformers" in check.fix and doctor.can_train([check])
