"""The cluster launchers in dry-run mode (``DRY_RUN=1``): the commands they would run on a TPU
pod slice and under SLURM, read back without network, gcloud or srun."""
import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(script, *args):
  env = dict(os.environ, DRY_RUN="1", PATH="/usr/bin:/bin")  # no gcloud, no srun
  env.pop("SLURM_SUBMIT_DIR", None)
  out = subprocess.run(["bash", os.path.join(REPO, script), *args], env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout
  return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _train_command(remote: str) -> list:
  """The ``launch/train.py`` invocation inside a remote shell command."""
  words = shlex.split(remote)
  start = words.index("launch/train.py")
  assert words[start - 1] == "python"
  return words[start:]


def test_tpu_pod_setup_ships_the_tree_and_installs_the_tpu_extra_on_every_worker():
  archive, scp, ssh = _dry_run("launch/cluster/tpu_pod.sh", "setup", "my-tpu", "us-central2-b")
  assert archive[:3] == ["git", "-C", REPO] and archive[3:5] == ["archive", "--format=tar.gz"]
  tarball = archive[archive.index("-o") + 1]
  assert archive[-1] == "HEAD"
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[5] == tarball
  assert "--worker=all" in scp and "--worker=all" in ssh and ssh[ssh.index("--zone") + 1] == \
      "us-central2-b"
  remote = ssh[ssh.index("--command") + 1]
  assert "tar -xzf ~/deform3d.tar.gz" in remote and "python3 -m venv .venv" in remote
  assert ".venv/bin/pip install -q -e '.[tpu,data]'" in remote


def test_tpu_pod_train_runs_the_same_command_on_every_worker():
  (ssh,) = _dry_run("launch/cluster/tpu_pod.sh", "train", "my-tpu", "europe-west4-a",
                    "configs/ntu.py:split=xsub60", "gs://bucket/w ntu", "--config.batch_size=128")
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and ssh[5] == "my-tpu"
  assert "--worker=all" in ssh
  remote = ssh[ssh.index("--command") + 1]
  assert remote.startswith("cd ~/deform3d && . .venv/bin/activate && ")
  assert _train_command(remote) == ["launch/train.py", "--config", "configs/ntu.py:split=xsub60",
                                    "--workdir", "gs://bucket/w ntu", "--config.batch_size=128"]


def test_slurm_job_makes_the_gpu_environment_once_then_srun_trains():
  venv, pip_up, pip, srun = _dry_run("launch/cluster/slurm.sbatch", "configs/ntu.py",
                                     "/shared/w", "--config.seed=1")
  assert venv == ["python3", "-m", "venv", os.path.join(REPO, ".venv-gpu")]
  assert pip[-1] == f"{REPO}[gpu,data]" and pip[:2] == [os.path.join(REPO, ".venv-gpu/bin/pip"),
                                                        "install"]
  assert srun[:3] == ["srun", "--chdir", REPO]
  assert srun[3:] == [os.path.join(REPO, ".venv-gpu/bin/python"), "launch/train.py", "--config",
                      "configs/ntu.py", "--workdir", "/shared/w", "--config.seed=1"]
  assert os.path.exists(os.path.join(REPO, "launch/train.py"))


@pytest.mark.parametrize("args", [[], ["deploy", "t", "z"], ["train", "t", "z", "configs/ntu.py"]])
def test_tpu_pod_refuses_bad_arguments_with_its_usage(args):
  env = dict(os.environ, DRY_RUN="1")
  run = subprocess.run(["bash", os.path.join(REPO, "launch/cluster/tpu_pod.sh"), *args], env=env,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and "tpu_pod.sh setup TPU_NAME ZONE" in run.stderr
