"""Multi-process JAX setup: ``jax.distributed.initialize`` from flags, environment or cluster.

Order of precedence:
1. explicit arguments (``launch/train.py --coordinator_address --num_processes --process_id``);
2. environment ``DEFORM3D_COORDINATOR``, ``DEFORM3D_NUM_PROCESSES``, ``DEFORM3D_PROCESS_ID``;
3. cluster auto-detection by JAX (SLURM via ``srun``; Cloud TPU pod slices), used when SLURM
   runs more than one task or a TPU slice has more than one worker;
4. otherwise a single process (nothing to initialize).

On CPU, cross-process collectives use gloo (JAX's default CPU collectives).
"""
from __future__ import annotations

import os
from typing import Optional

import jax


def _tpu_pod() -> bool:
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _slurm_multi_task() -> bool:
  return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> str:
  """Starts the multi-process runtime if this is one process of several; returns how."""
  env = os.environ
  coordinator_address = coordinator_address or env.get("DEFORM3D_COORDINATOR")
  if num_processes is None and "DEFORM3D_NUM_PROCESSES" in env:
    num_processes = int(env["DEFORM3D_NUM_PROCESSES"])
  if process_id is None and "DEFORM3D_PROCESS_ID" in env:
    process_id = int(env["DEFORM3D_PROCESS_ID"])
  given = [coordinator_address is not None, num_processes is not None, process_id is not None]
  if any(given):
    if not all(given):
      raise ValueError("multi-process: give all of coordinator address, number of processes and "
                       f"process id (got coordinator={coordinator_address!r}, "
                       f"num_processes={num_processes!r}, process_id={process_id!r})")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process id {process_id} outside [0, {num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return f"explicit: process {process_id} of {num_processes} via {coordinator_address}"
  if _slurm_multi_task() or _tpu_pod():
    jax.distributed.initialize()  # JAX's cluster detection (SLURM, GCE TPU)
    return f"auto-detected: process {jax.process_index()} of {jax.process_count()}"
  return "single process"
