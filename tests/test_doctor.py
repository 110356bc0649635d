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
