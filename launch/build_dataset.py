"""Build a dataset of the paper from its raw files with TFDS + Apache Beam.

  python launch/build_dataset.py --dataset ntu_rgbd/ntu60_xsub --manual_dir /data/ntu \
      --data_dir data/tfds --workers 16

Writes ``DATA_DIR/<builder>/<config>/1.1.0/`` (shards, dataset_info.json, class names,
``{split}-skipped.json``); point ``config.dataset.data_dir`` there. ``--workers`` > 1 runs Beam's
DirectRunner with that many processes; any other runner takes ``--beam_options``. Records do not
depend on the runner or the worker count. A build that stops leaves only a temporary folder, so
re-running it starts clean (TFDS writes into ``*.incomplete*`` and renames when done).
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

_DATASET = flags.DEFINE_string("dataset", None, "<builder>/<config>, e.g. ntu_rgbd/ntu60_xsub.",
                               required=True)
_MANUAL = flags.DEFINE_string("manual_dir", None, "Folder with the raw files.", required=True)
_DATA = flags.DEFINE_string("data_dir", "data/tfds", "Output root.")
_WORKERS = flags.DEFINE_integer("workers", 1, "DirectRunner worker processes.")
_SHORT = flags.DEFINE_integer("short_side", 256, "Stored frame short side in pixels (0 = source).")
_FPS = flags.DEFINE_float("fps", 0.0, "Stored frame rate (0 = every source frame).")
_BEAM = flags.DEFINE_list("beam_options", [], "Extra Beam pipeline options (--runner=...).")


def build(dataset: str, manual_dir: str, data_dir: str, workers: int = 1, short_side: int = 256,
          fps: float = 0.0, beam_options=()):
  """Builds and returns ``(output dir, {split: count}, {split: skipped entries})``."""
  import json

  from data_pipelines.datasets import BUILDERS, common  # names the extra if TFDS is missing

  tfds = common.tfds
  PipelineOptions = common.require("apache_beam.options.pipeline_options",
                                   "building a dataset (its Beam pipeline)").PipelineOptions

  name, _, config_name = dataset.partition("/")
  if name not in BUILDERS:
    raise ValueError(f"--dataset {dataset!r}: builder must be one of "
                     f"{sorted(BUILDERS)}")
  cls = BUILDERS[name]
  base = cls.builder_configs.get(config_name or cls.BUILDER_CONFIGS[0].name)
  if base is None:
    raise ValueError(f"--dataset {dataset!r}: config must be one of {sorted(cls.builder_configs)}")
  short = short_side or None
  rate = fps or None
  config = base
  if (short, rate) != (base.short_side, base.fps):
    suffix = f"_{short or 'src'}px" + (f"_{rate:g}fps" if rate else "")
    config = common.Config(name=base.name + suffix, benchmark=base.benchmark,
                                  short_side=short, fps=rate, description=base.description)
  opts = ["--runner=DirectRunner"]
  if workers > 1:
    opts += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
  opts += list(beam_options)
  builder = cls(config=config, data_dir=data_dir)
  t0 = time.time()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, beam_options=PipelineOptions(opts)))
  out = os.fspath(builder.data_dir)
  counts = {s: info.num_examples for s, info in builder.info.splits.items()}
  skipped = {}
  for s in counts:
    path = os.path.join(out, f"{s}-skipped.json")
    skipped[s] = json.load(open(path))["skipped"] if os.path.exists(path) else []
  print(f"{name}/{config.name}: {counts} written, "
        f"{ {s: len(v) for s, v in skipped.items()} } skipped (listed in {out}/*-skipped.json), "
        f"{time.time() - t0:.1f} s -> {out}", flush=True)
  return out, counts, skipped


def main(argv):
  del argv
  build(_DATASET.value, _MANUAL.value, _DATA.value, _WORKERS.value, _SHORT.value, _FPS.value,
        _BEAM.value)


if __name__ == "__main__":
  app.run(main)
