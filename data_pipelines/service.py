"""Preprocessing on other machines with tf.data service (``launch/data_service.py``).

A dispatcher hands out work; workers (CPU machines, or the accelerator hosts' spare cores) run
the training input pipeline's graph, tf.data ops only, and stream preprocessed clips to the
trainer. ``config.dataset.service = "grpc://host:port"`` points training at a dispatcher
(docs/scaling.md: the layouts).

Sharding policy: ``DYNAMIC``. The pipeline's first source is the range of epochs, so each
epoch is one unit of work given to one worker: every clip of every epoch is made exactly once,
with the same crop, flip and frames as the local pipeline at that position (its randomness is
keyed by ``(seed, position)``), but epochs processed by different workers interleave, so the
order of clips is not deterministic and a resumed run gets the same clips in another order.
A worker that dies mid-epoch is survived: the dispatcher gives the next epochs to the others;
the clips of the epoch it was processing that it had not yet delivered are lost (at most once,
tf.data service's guarantee under dynamic sharding). Tested on loopback in
``tests/test_service.py``.
"""
from __future__ import annotations

import tensorflow as tf

PROTOCOL = "grpc"


def address(target: str) -> str:
  """``host:port`` of ``grpc://host:port`` or ``host:port``."""
  return target.split("://", 1)[-1]


def distribute(ds: tf.data.Dataset, service: str) -> tf.data.Dataset:
  """``ds`` read through the dispatcher at ``service``, dynamically sharded (a job of its own
  per iterator)."""
  return ds.apply(tf.data.experimental.service.distribute(
      processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
      service=f"{PROTOCOL}://{address(service)}"))


def start_dispatcher(port: int = 0, work_dir: str | None = None,
                     worker_timeout_ms: int = 10_000):
  """A dispatcher on ``port`` (0: any free port); ``work_dir`` makes it fault tolerant (its
  state survives a restart); a worker silent for ``worker_timeout_ms`` is taken as gone.
  Returns the server; its address is ``server.target``."""
  config = tf.data.experimental.service.DispatcherConfig(
      port=port, protocol=PROTOCOL, work_dir=work_dir, fault_tolerant_mode=work_dir is not None,
      worker_timeout_ms=worker_timeout_ms)
  return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, worker_address: str | None = None,
                 heartbeat_interval_ms: int = 1000):
  """A worker of the dispatcher at ``dispatcher`` (``host:port``), serving on ``port``.
  ``worker_address``: how the trainer reaches it (``host:%port%``) when not ``localhost``."""
  kw = {"worker_address": worker_address} if worker_address else {}
  config = tf.data.experimental.service.WorkerConfig(
      dispatcher_address=address(dispatcher), port=port, protocol=PROTOCOL,
      heartbeat_interval_ms=heartbeat_interval_ms, **kw)
  return tf.data.experimental.service.WorkerServer(config)
