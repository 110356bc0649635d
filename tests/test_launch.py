import subprocess

from lora_studio.core.config import RunConfig
from lora_studio.core.train import accelerate_command, write_launch_bundle


def test_launch_bundle_is_runnable_shell_and_keeps_the_config(tmp_path):
    config = RunConfig().with_overrides({"output.run_name": "big", "training.learning_rate": 1e-4})
    bundle = write_launch_bundle(config, tmp_path, gpus_per_machine=4, machines=2)
    assert RunConfig.load(bundle.config) == config
    for script in (bundle.script, bundle.slurm):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = bundle.slurm.read_text()
    assert "#SBATCH --nodes=2" in text and "--num_processes 8" in text and "$SLURM_NODEID" in text
    assert "-m lora_studio train --config run.toml" in bundle.script.read_text()


def test_single_gpu_and_fsdp_commands():
    assert "--multi_gpu" not in accelerate_command("run.toml", processes=1)
    assert "--multi_gpu" in accelerate_command("run.toml", processes=2)
    assert "--use_fsdp" in accelerate_command("run.toml", processes=2, fsdp=True)
