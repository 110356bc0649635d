"""Ready-to-run files for taking a run from the app to a multi-GPU machine or a cluster.

The run config the GUI writes trains unchanged under ``accelerate launch`` or ``torchrun``; this
writes it next to the command lines that do so (a shell script and a Slurm batch script), so a
user never has to learn the launcher's flags to scale out.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lora_studio.core.atomic import atomic_write_text
from lora_studio.core.config import RunConfig


@dataclass(frozen=True)
class LaunchBundle:
    config: Path
    script: Path
    slurm: Path
    command: str


def accelerate_command(config_path: str, *, processes: int, machines: int = 1, fsdp: bool = False) -> str:
    """The ``accelerate launch`` line for ``processes`` GPUs in total over ``machines`` machines."""
    parts = ["accelerate", "launch", "--num_processes", str(processes), "--num_machines", str(machines)]
    if fsdp:
        parts += [
            "--use_fsdp",
            "--fsdp_sharding_strategy",
            "FULL_SHARD",
            "--fsdp_auto_wrap_policy",
            "TRANSFORMER_BASED_WRAP",
        ]
    elif processes > 1:
        parts.append("--multi_gpu")
    if machines > 1:
        parts += [
            "--machine_rank",
            "$MACHINE_RANK",
            "--main_process_ip",
            "$MAIN_IP",
            "--main_process_port",
            "29500",
        ]
    parts += ["-m", "lora_studio", "train", "--config", config_path]
    return " ".join(p if p.startswith("$") else shlex.quote(p) for p in parts)


def write_launch_bundle(
    config: RunConfig, folder: Path, *, gpus_per_machine: int = 2, machines: int = 1, fsdp: bool = False
) -> LaunchBundle:
    """Write run.toml, launch.sh and slurm.sbatch into ``folder`` (each replaced atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "run.toml"
    config.save(config_path)
    processes = gpus_per_machine * machines
    command = accelerate_command("run.toml", processes=processes, machines=machines, fsdp=fsdp)
    script = folder / "launch.sh"
    multi_node = (
        "# On each machine set MACHINE_RANK (0 on the main one) and MAIN_IP (the main machine's address).\n"
        if machines > 1
        else ""
    )
    atomic_write_text(
        script,
        (
            "#!/usr/bin/env bash\n"
            "# Train this LoRA Studio run on several GPUs. Needs lora-studio installed in the active environment.\n"
            f'{multi_node}set -euo pipefail\ncd "$(dirname "$0")"\n{command}\n'
        ),
    )
    script.chmod(0o755)
    slurm = folder / "slurm.sbatch"
    atomic_write_text(
        slurm,
        (
            "#!/usr/bin/env bash\n"
            f"#SBATCH --job-name={config.output.run_name}\n"
            f"#SBATCH --nodes={machines}\n"
            "#SBATCH --ntasks-per-node=1\n"
            f"#SBATCH --gpus-per-node={gpus_per_machine}\n"
            "#SBATCH --time=24:00:00\n"
            "# Submit with: sbatch slurm.sbatch   (edit partition/account lines for your cluster)\n"
            "set -euo pipefail\n"
            'cd "$SLURM_SUBMIT_DIR"\n'
            'MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
            "export MAIN_IP\n"
            "srun bash -c '"
            + accelerate_command(
                "run.toml", processes=processes, machines=max(machines, 1), fsdp=fsdp
            ).replace("$MACHINE_RANK", "$SLURM_NODEID")
            + "'\n"
        ),
    )
    return LaunchBundle(config_path, script, slurm, command)
