"""Breaks as code: each deliberate bug that a test must catch, made again and tried.

Every entry of ``BREAKS`` is one break: in ``file``, the text ``exact`` (which must occur there
exactly once) is replaced by ``replacement``; the tests ``tests`` (pytest node ids) must then
fail. ``why`` says which property those tests guard.

    python -m tests.breaks [--only NAME ...] [--list] [--rev REV] [--jobs 1] [--baseline]
        [--timeout 900] [--json PATH] [--table docs/experiments/breaks/table.md] [--times PATH]
    python -m tests.breaks --render JSON --table PATH [--before JSON]   (an earlier pass's table;
        --before puts a still earlier pass's result per entry beside it)

For each entry: a scratch copy of the tree (the working tree: the files git tracks plus the
untracked ones it does not ignore; or ``git archive REV`` with ``--rev``), the replacement made
there, and ``python -m pytest -q -x -p no:cacheprovider <tests>`` run in that copy with
``PYTHONPATH`` set to it (the package is installed editable from the repository, so a
subprocess a test starts, e.g. ``python launch/train.py``, would otherwise import the unbroken
code). Results:

* **caught**: the tests failed;
* **NOT caught**: they passed (or were all skipped), or ran past ``--timeout`` ("timeout");
* **invalid**: the break is not a break of the code under test: the edited Python file does
  not compile, or pytest could not collect the tests (exit status 2-5).

All runs share one JAX persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``; a fresh
directory removed at the end unless the variable is already set), so a program that a break
leaves unchanged compiles once for the whole pass (``tests/conftest.py`` makes a cache of its
own per session only when the variable is unset). ``--baseline`` first runs every entry's tests
on the unbroken copy, which must pass for the results to mean anything.

The JSON summary (``--json``) and the Markdown table (``--table``) are rewritten after every
entry, so an interrupted pass keeps what it ran. ``--times`` (the JSON of an earlier pass)
orders the entries cheapest first and gives the ETA from their earlier times.

``tests/test_breaks.py`` checks, without running any break, that the entries fit the tree.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TIMEOUT = 900


@dataclasses.dataclass(frozen=True)
class Break:
  name: str          # short and unique
  file: str          # relative to the repository root
  exact: str         # must occur exactly once in ``file``
  replacement: str
  tests: tuple       # pytest node ids that must fail
  why: str           # the property those tests guard, one line


def B(name, file, exact, replacement, tests, why):  # noqa: N802 (reads like a table row)
  return Break(name, file, exact, replacement, tuple([tests] if isinstance(tests, str) else tests),
               why)


TRAINER = "deform3d/train/trainer.py"
PIPELINE = "data_pipelines/input_pipeline.py"
T_TRAIN = "tests/test_train.py::"
T_DATA = "tests/test_data.py::"
T_DATASETS = "tests/test_datasets.py::"
T_MODEL = "tests/test_model.py::"
T_FAST = "tests/test_fast_paths.py::"
T_FUSED = "tests/test_fused_attention.py::"
T_RESIZE = "tests/test_resize.py::"
T_LOWER = "tests/test_lowering.py::"
CROPS = T_DATA + "test_random_crops_of_non_square_frames_keep_each_frame_with_its_keypoints"
EVAL_CLIPS = T_TRAIN + "test_evaluation_averages_each_videos_own_clips_and_keeps_its_label"
DEVICE_STEPS = (T_TRAIN + "test_device_resize_runs_the_pipelines_padded_crops_through_the_"
                "compiled_steps")
POSE_MOTION = ("    rel, motion = rel / size, motion / size\n",
               "    rel, motion = rel / size, motion\n")

BREAKS: List[Break] = [
    # -- training and evaluation ---------------------------------------------------------------
    B("eval-loop-per-process", TRAINER,
      "      if multi:\n"
      "        # [has a batch, local batch size, clips per video] of every process.\n"
      "        shape = ((batch[\"label\"].shape[0], batch[\"keypoints\"].shape[1]) if batch is not None\n"
      "                 else (0, 0))\n"
      "        info = gather(np.array([batch is not None, *shape], np.int32)).reshape(-1, 3)\n"
      "        if not info[:, 0].any():\n"
      "          break\n"
      "        if batch is None:\n"
      "          batch = template if template is not None else self._empty_eval_batch(\n"
      "              *info[info[:, 0].argmax(), 1:])\n"
      "      elif batch is None:\n"
      "        break\n",
      "      if batch is None:\n"
      "        break\n",
      "tests/test_multihost.py::test_two_process_evaluation_of_an_uneven_split_matches_one_process",
      "processes with uneven evaluation splits run the same steps and collectives (no hang)"),
    B("eval-step-reshape-mixes-videos", TRAINER,
      "return logits.reshape(b, k, -1).mean(axis=1)",
      "return logits.reshape(k, b, -1).mean(axis=0)",
      EVAL_CLIPS, "a video's logits are the mean of its own clips"),
    B("eval-logits-reversed-against-labels", TRAINER,
      "all_logits.append(logits[keep])",
      "all_logits.append(logits[keep][::-1])",
      EVAL_CLIPS, "each video's logits stay paired with its own label"),
    B("top5-is-top-all", "deform3d/train/metrics.py",
      "k = min(5, num_classes)", "k = num_classes",
      T_TRAIN + "test_top5_and_mean_class_accuracy_with_more_than_five_classes",
      "top-5 counts only the five highest classes"),
    B("update-sign-flipped", TRAINER,
      "params = optax.apply_updates(state.params, updates)",
      "params = optax.apply_updates(state.params, jax.tree.map(lambda u: -u, updates))",
      T_TRAIN + "test_training_learns_through_the_real_trainer_and_pipeline",
      "the real trainer and pipeline learn (loss falls, held-out top-1 above chance)"),
    B("tensorflow-imported-by-training-code", "deform3d/train/metrics.py",
      "import numpy as np\n", "import numpy as np\nimport tensorflow  # noqa: F401\n",
      T_TRAIN + "test_training_code_never_imports_tensorflow",
      "no deform3d module imports TensorFlow"),
    B("tensorboard-step-plus-one", TRAINER,
      'writer.add_scalar(f"train/{k}", v, step)',
      'writer.add_scalar(f"train/{k}", v, step + 1)',
      T_TRAIN + "test_train_command_writes_eval_test_and_tensorboard_and_eval_command_agrees",
      "TensorBoard's training scalars are written at the step they were logged at"),
    B("legacy-without-pose-norm", TRAINER,
      '"pose_norm": False, "cross_rgb_scale": None}',
      '"cross_rgb_scale": None}',
      T_TRAIN + "test_fingerprint_ignores_only_how_the_model_is_computed",
      "a workdir from before pose_norm existed still resumes"),
    B("fingerprint-cross-rgb-scale-none", TRAINER,
      '      v = fp["model"].get("layer_scale")\n', "      pass\n",
      T_TRAIN + "test_fingerprint_ignores_only_how_the_model_is_computed",
      "cross_rgb_scale=None is the same model as cross_rgb_scale=layer_scale"),
    B("restore-drops-optimizer-state", TRAINER,
      '    return restored["state"]\n',
      '    return restored["state"].replace(opt_state=trainer.tx.init(restored["state"].params))\n',
      T_TRAIN + "test_restore_checkpoint_for_evaluation_names_missing_steps",
      "a restored checkpoint holds the saved optimizer state, not a fresh one"),
    B("restore-drops-optimizer-state-resume", TRAINER,
      '    return restored["state"]\n',
      '    return restored["state"].replace(opt_state=trainer.tx.init(restored["state"].params))\n',
      "tests/test_reliability.py::test_sigkill_at_random_steps_then_resume_is_bit_identical",
      "a run killed and resumed ends bit-identical to an uninterrupted one"),
    B("frames-unresized-on-device", TRAINER,
      'return normalize_pixels(resize_crops(batch["frames"], batch["crop"], size, batch["flip"]))',
      'return normalize_pixels(batch["frames"])',
      DEVICE_STEPS, "with resize='device' the step resizes the padded crops"),
    B("batch-fields-without-crop", TRAINER,
      '      fields["crop"] = (lead[:1], np.dtype(np.int32))\n', "",
      DEVICE_STEPS, "the steps compiled ahead take the pipeline's device-resize batches"),
    # -- the input pipeline ----------------------------------------------------------------------
    B("record-sharding-all-shard-0", PIPELINE,
      "ds = ds.shard(process_count, process_index)", "ds = ds.shard(process_count, 0)",
      T_DATA + "test_process_sharding_covers_every_record_once[3]",
      "record-level sharding gives every record to exactly one process"),
    B("file-sharding-first-half", PIPELINE,
      "return files[process_index::process_count], False",
      "return files[:len(files) // process_count], False",
      T_DATA + "test_process_sharding_covers_every_record_once[2]",
      "file-level sharding gives every file to exactly one process"),
    B("keypoints-without-crop-offset", PIPELINE,
      "x = (2.0 * (kp[..., 0] - tf.cast(ox, tf.float32)) + 1.0) / size_f - 1.0",
      "x = (2.0 * kp[..., 0] + 1.0) / size_f - 1.0",
      CROPS, "keypoints are relative to the crop"),
    B("keypoints-ox-oy-swapped", PIPELINE,
      "x = (2.0 * (kp[..., 0] - tf.cast(ox, tf.float32)) + 1.0) / size_f - 1.0\n"
      "  y = (2.0 * (kp[..., 1] - tf.cast(oy, tf.float32)) + 1.0) / size_f - 1.0",
      "x = (2.0 * (kp[..., 0] - tf.cast(oy, tf.float32)) + 1.0) / size_f - 1.0\n"
      "  y = (2.0 * (kp[..., 1] - tf.cast(ox, tf.float32)) + 1.0) / size_f - 1.0",
      CROPS, "each keypoint axis uses its own crop offset"),
    B("keypoints-divided-by-output-size", PIPELINE,
      "size_f = tf.cast(size, tf.float32)", "size_f = tf.cast(image_size, tf.float32)",
      CROPS, "keypoints are normalized by the crop size"),
    B("keypoints-of-other-frames", PIPELINE,
      "kp = tf.gather(kp, flat, axis=1)", "kp = tf.gather(kp, tf.reverse(flat, [0]), axis=1)",
      CROPS, "each frame keeps its own keypoints"),
    B("uint8-frames-truncated", PIPELINE,
      "tf.cast(tf.round(tf.clip_by_value(frames, 0.0, 255.0)), tf.uint8)",
      "tf.cast(tf.clip_by_value(frames, 0.0, 255.0), tf.uint8)",
      T_DATA + "test_uint8_frames_are_the_float_frames_rounded[False]",
      "uint8 frames are the float frames rounded to the nearest level"),
    B("device-resize-flip-dropped", PIPELINE,
      'out["flip"] = flip if train else tf.constant(False)', 'out["flip"] = tf.constant(False)',
      T_RESIZE + "test_device_resize_gives_the_host_pipelines_frames[20-True]",
      "the device resize mirrors the clips the host drew a flip for"),
    B("eval-clips-same-offset", PIPELINE,
      "(tf.range(num_clips, dtype=tf.float32)[:, None] + 0.5) / num_clips",
      "(0.0 * tf.range(num_clips, dtype=tf.float32)[:, None] + 0.5) / num_clips",
      T_DATA + "test_evaluation_clips_are_evenly_offset_in_time",
      "the K evaluation clips of a video start at K different offsets"),
    B("train-segments-fixed-offset", PIPELINE,
      "offsets = rand([1, num_frames], 1)", "offsets = tf.fill([1, num_frames], 0.5)",
      T_DATA + "test_training_clips_draw_a_random_frame_of_each_segment",
      "training clips draw a random frame of each temporal segment (temporal jitter)"),
    B("embedded-ensure-any-version", "data_pipelines/embedded.py",
      "if os.path.exists(version) and open(version).read().strip() == DATASET_VERSION:",
      "if os.path.exists(version):",
      T_DATA + "test_embedded_ensure_builds_once_and_rebuilds_a_new_version",
      "the embedded dataset is rebuilt when its version changes"),
    # -- converters and the user's clip ----------------------------------------------------------
    B("ntu-frames-reversed", "data_pipelines/datasets/ntu.py",
      '  frames, fps = common.read_video(item["video"])\n',
      '  frames, fps = common.read_video(item["video"])\n  frames = frames[::-1]\n',
      T_DATASETS + "test_ntu_kinect_records_equal_source",
      "NTU records hold the source video's frames in order"),
    B("pyskl-frozen-video", "data_pipelines/datasets/pyskl.py",
      '  frames, fps = common.read_video(item["video"], item.get("start"), item.get("end"))\n',
      '  frames, fps = common.read_video(item["video"], item.get("start"), item.get("end"))\n'
      "  frames = np.repeat(frames[:1], len(frames), axis=0)\n",
      T_DATASETS + "test_pyskl_records_equal_source",
      "pyskl records hold every frame of the video, not one repeated"),
    B("finegym-window-from-event-start", "data_pipelines/datasets/finegym.py",
      "return vid, t0 + float(stages[0][0]), t0 + float(stages[-1][1])",
      "return vid, t0, t0 + float(stages[-1][1]) - float(stages[0][0])",
      T_DATASETS + "test_finegym_records_equal_source",
      "each FineGYM element is cut from its own window of the event video"),
    B("pyskl-keypoint-bare-asarray", "data_pipelines/datasets/pyskl.py",
      'kp = common.field_array(ann, "keypoint", np.float32, where)',
      'kp = np.asarray(ann["keypoint"], np.float32)',
      T_DATASETS + "test_ragged_fields_are_skipped_with_the_file_and_field_named",
      "a ragged pose field is skipped with its file and field named"),
    B("pose-file-not-rescaled", "data_pipelines/user_clip.py",
      "if shape is not None and tuple(shape) != tuple(frame_hw):",
      "if False:",
      "tests/test_predict.py::test_pose_files_of_another_image_size_and_ntu_skeletons_land_on_"
      "the_video",
      "pose files of another image size are rescaled to the video's pixels"),
    # -- model, ops and fast paths ---------------------------------------------------------------
    B("fast-attention-logits-scaled", "deform3d/models/fast.py",
      "logits = (matmul_nt(q, k) * (head_dim ** -0.5))",
      "logits = (matmul_nt(q, k) * (head_dim ** -0.5) * (1 + 1e-4))",
      T_FAST + "test_fast_attention_equals_plain_with_bias_mask_and_pooling",
      "the fast attention computes the plain attention's function (1e-5)"),
    B("matmul-nt-key-gradient-off", "deform3d/ops/batched_matmul.py",
      "return da, _rows_contracted(g, a, b.dtype)",
      "return da, _rows_contracted(g, a, b.dtype) * (1 + 3e-5)",
      T_FAST + "test_fast_attention_equals_plain_with_bias_mask_and_pooling",
      "the fast attention's gradients equal the plain ones within float32 rounding"),
    B("matmul-nt-key-gradient-off-joint-attention", "deform3d/ops/batched_matmul.py",
      "return da, _rows_contracted(g, a, b.dtype)",
      "return da, _rows_contracted(g, a, b.dtype) * (1 + 3e-5)",
      T_FAST + "test_fast_joint_attention_equals_plain[5-3-1-1]",
      "the rounding-noise leaf tolerance still sees a 3e-5 gradient error"),
    B("bfloat16-ignored", "deform3d/models/factory.py",
      '"bfloat16": jnp.bfloat16', '"bfloat16": jnp.float32',
      T_MODEL + "test_bfloat16_compute_keeps_float32_params",
      "model.dtype='bfloat16' computes in bfloat16"),
    B("jit-vs-eager-on-init-params", "tests/test_model.py",
      "  eager = model.apply(moved, frames, keypoints)\n"
      "  jitted = jax.jit(model.apply)(moved, frames, keypoints)\n"
      "  again = jax.jit(model.apply)(moved, frames, keypoints)\n",
      "  eager = model.apply(variables, frames, keypoints)\n"
      "  jitted = jax.jit(model.apply)(variables, frames, keypoints)\n"
      "  again = jax.jit(model.apply)(variables, frames, keypoints)\n",
      T_MODEL + "test_jit_matches_eager_and_is_deterministic",
      "jit-vs-eager compares a model whose logits are not all zero"),
    B("sampler-backward-sorted-as-onehot", "deform3d/ops/sampling.py",
      "  return backward\n", '  return "onehot" if backward == "sorted" else backward\n',
      T_MODEL + "test_sampler_backward_reaches_the_sampler",
      "model.sampler_backward reaches the sampler's gradient"),
    B("sampler-mask-misses-upper-z", "deform3d/ops/sampling.py",
      "& (zi >= 0) & (zi < d)", "& (zi >= 0)",
      "tests/test_sampling.py::test_matches_numpy_reference_float64[False-zeros]",
      "corners past the volume's far z edge contribute zero (padding_mode='zeros')"),
    B("pose-motion-not-normalized", "deform3d/models/embeddings.py", *POSE_MOTION,
      T_MODEL + "test_pose_norm_features_are_in_body_size_units",
      "pose_norm divides offsets and motion by the clip's body size"),
    B("pose-size-per-frame", "deform3d/models/embeddings.py",
      "    n = jnp.maximum(present.sum(axis=(1, 2), keepdims=True), 1.0)\n"
      "    power = (rel ** 2).sum(axis=(1, 2, 3), keepdims=True) / n",
      "    n = jnp.maximum(present.sum(axis=2, keepdims=True), 1.0)\n"
      "    power = (rel ** 2).sum(axis=(2, 3), keepdims=True) / n",
      T_MODEL + "test_pose_norm_features_are_in_body_size_units",
      "the body size is one number per clip, so a bow still shows"),
    B("pose-motion-not-normalized-vs-torch", "deform3d/models/embeddings.py", *POSE_MOTION,
      "tests/test_torch_reference.py::test_same_logits_and_gradients_as_flax[overrides7-4-7-2]",
      "the Flax model equals the independent PyTorch reference with pose_norm"),
    B("cross-rgb-scale-ignored", "deform3d/models/blocks.py",
      "scale = self.cross_rgb_scale if gated else self.layer_scale", "scale = self.layer_scale",
      T_MODEL + "test_cross_rgb_scale_zero_starts_the_fusion_tokens_from_pose_alone",
      "cross_rgb_scale sets the cross token's LayerScale"),
    B("scan-plan-padding-groups-counted", "deform3d/models/stride_attention.py",
      "        group_weights = group_weights & real\n", "        group_weights = group_weights\n",
      "tests/test_scan.py::test_scan_equals_loop[settings1-2-25]",
      "a scanned joint plan's padding groups stay out of the cross token's mean"),
    B("fsdp-splits-layer-axis", "deform3d/train/sharding.py",
      "if stacked and axis == 0:", "if False:",
      "tests/test_scan.py::test_fsdp_never_splits_the_layer_axis_of_stacked_parameters",
      "fsdp keeps the layer axis of stacked parameters whole"),
    B("fused-kernel-dhk-sign", "deform3d/ops/fused_attention.py",
      "new_dhk.append(dhk[j] - w2[j]", "new_dhk.append(dhk[j] + w2[j]",
      T_FUSED + "test_op_equals_materialized_attention_float32[shape1-blocks1]",
      "the fused kernel's key-position gradient equals autodiff's"),
    B("fused-kernel-padded-keys-unmasked", "deform3d/ops/fused_attention.py",
      "  return jnp.where(keys < key_len, s, NEG)\n", "  return s\n",
      T_FUSED + "test_op_equals_materialized_attention_float32[shape0-blocks0]",
      "the fused kernel masks the keys it pads to a tile"),
    B("fused-module-mlp-repeated", "deform3d/models/fast.py",
      "w2=jnp.tile(w2, (1, g))", "w2=jnp.repeat(w2, g, axis=1)",
      T_FUSED + "test_fused_module_equals_plain_at_every_configs_shapes[embedded]",
      "the fused module gives each head its own relative-position MLP column"),
    B("resize-weights-read-padding", "deform3d/ops/resize.py",
      "  w = jnp.where(pixel < size, w, 0.0)\n", "",
      T_RESIZE + "test_resize_crops_equals_tensorflows_antialiased_resize[17]",
      "the device resize reads only the pixels inside the crop"),
    B("resize-kernel-not-widened", "deform3d/ops/resize.py",
      "width = jnp.maximum(ratio, 1.0)", "width = jnp.ones_like(ratio)",
      T_RESIZE + "test_resize_crops_equals_tensorflows_antialiased_resize[17]",
      "the device resize antialiases when it shrinks, as the host's"),
    B("resize-flip-ignored", "deform3d/ops/resize.py",
      "wx = w if flip is None else", "wx = w if True else",
      T_RESIZE + "test_resize_crops_equals_tensorflows_antialiased_resize[17]",
      "the device resize mirrors the examples flagged flip"),
    # -- reference comparisons, explanations, host -----------------------------------------------
    B("over-runs-ranked-worst-first", "deform3d/explain/faithfulness.py",
      'key=lambda m: -r["methods"][m][key]', 'key=lambda m: r["methods"][m][key]',
      "tests/test_explain.py::test_faithfulness_over_runs_gives_each_median_and_range_and_each_"
      "runs_ranking",
      "each run's methods are ranked best first"),
    B("over-runs-deletion-from-k1", "deform3d/explain/faithfulness.py",
      'spread([x["deletion"][str(k)]["prob_drop"]', 'spread([x["deletion"]["1"]["prob_drop"]',
      "tests/test_explain.py::test_faithfulness_over_runs_gives_each_median_and_range_and_each_"
      "runs_ranking",
      "each deletion size's spread is read from that deletion"),
    B("malloc-arena-max-2", "deform3d/host_malloc.py",
      '"glibc.malloc.arena_max=1")', '"glibc.malloc.arena_max=2")',
      "tests/test_host_malloc.py::test_maybe_reexec_restarts_the_same_command_once",
      "the malloc restart sets the tunables written out in the test"),
    # -- accelerator programs: the lowering tier -----------------------------------------------
    B("lowering-gpu-kernel-interpreted", "deform3d/ops/fused_attention.py",
      'return _Variant("gpu", block_q, block_k, 1, False, False,',
      'return _Variant("gpu", block_q, block_k, 1, False, True,',
      T_LOWER + "test_steps_lower_for_cuda_and_tpu[embedded-pallas-bfloat16-1-replicated]",
      "the fused kernel lowered for cuda is Triton, not interpret-mode loops"),
    B("lowering-batch-replicated", TRAINER,
      "self.batch_sharding = shd.batch_sharding(mesh)",
      "self.batch_sharding = shd.replicated(mesh)",
      T_LOWER + "test_steps_lower_for_cuda_and_tpu[embedded-xla-float32-8-fsdp]",
      "on 8 devices the clips are split over the data axis in the lowered module"),
    B("lowering-fsdp-ignored", "deform3d/train/sharding.py",
      'if mode == "replicated" or n == 1 or', 'if True or',
      T_LOWER + "test_steps_lower_for_cuda_and_tpu[embedded-xla-float32-8-fsdp]",
      "param_sharding=fsdp splits parameters in the lowered module"),
    B("lowering-state-not-donated", TRAINER,
      "donate_argnums=(0,))", ")",
      T_LOWER + "test_steps_lower_for_cuda_and_tpu[embedded-pallas-bfloat16-1-replicated]",
      "the training step donates every leaf of its state"),
    B("lowering-kernel-not-per-device", "deform3d/ops/fused_attention.py",
      "if mesh.empty or mesh.size == 1:", "if True:",
      T_LOWER + "test_steps_lower_for_cuda_and_tpu[finegym-pallas-float32-8-replicated]",
      "under a multi-device mesh the kernel runs per device (Mosaic cannot be partitioned)"),
    B("fast-joint-cross-mean-counts-absent-persons", "deform3d/models/fast.py",
      "p, j = self.persons, self.num_joints\n"
      "    cross = group_mean(y[:, :, :, 0], self.group_weights)",
      "p, j = self.persons, self.num_joints\n    cross = group_mean(y[:, :, :, 0], None)",
      T_FAST + "test_fast_model_equals_plain_model_for_every_config[ntu:split=xsub60]",
      "a paper config's fast form (its first blocks, two persons, the second clip's first "
      "person alone) is the plain one: absent persons' groups stay out of the cross token"),
    B("tpu-compile-w2-in-vmem-blocks", "deform3d/ops/fused_attention.py",
      'return _Variant("tpu", 128, 128, TPU_LANES, True, False,',
      'return _Variant("tpu", 128, 128, TPU_LANES, False, False,',
      T_LOWER + "test_plan_command_compiles_for_a_tpu_topology_and_writes_memory_cost_and_"
      "largest_batch",
      "the TPU kernel's blocks are (8, 128)-valid: the step compiles for a TPU topology"),
]


# -- checking the entries against a tree ----------------------------------------------------------
class BreakError(ValueError):
  """An entry does not fit the tree (its file or its exact text)."""


def _test_functions(path: str) -> set:
  with open(path, encoding="utf-8") as fh:
    tree = ast.parse(fh.read(), path)
  return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def problems(breaks: Sequence[Break], root: str = ROOT) -> List[str]:
  """What is wrong with ``breaks`` against the tree at ``root``, one message per problem (empty
  when they fit): names unique, each ``exact`` exactly once in its file, replacements that change
  something, node ids naming a test function that exists in its file."""
  out, seen = [], set()
  functions: Dict[str, set] = {}
  for b in breaks:
    where = f"entry {b.name!r}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", b.name):
      out.append(f"{where}: name must be lower-case words joined by '-'")
    if b.name in seen:
      out.append(f"{where}: name used twice")
    seen.add(b.name)
    if not b.why.strip() or "\n" in b.why:
      out.append(f"{where}: why must be one line")
    if b.exact == b.replacement:
      out.append(f"{where}: replacement equals the exact text")
    try:
      count_once(b, root)
    except BreakError as e:
      out.append(str(e))
    if not b.tests:
      out.append(f"{where}: no tests")
    for node in b.tests:
      path, sep, func = node.partition("::")
      func = func.split("[")[0]
      if not sep or not path.startswith("tests/") or not path.endswith(".py") or "::" in func:
        out.append(f"{where}: test {node!r} is not tests/<file>.py::<test function>[<params>]")
        continue
      full = os.path.join(root, path)
      if not os.path.exists(full):
        out.append(f"{where}: test file {path} does not exist")
        continue
      if path not in functions:
        functions[path] = _test_functions(full)
      if func not in functions[path]:
        out.append(f"{where}: {path} has no test function {func!r}")
  return out


def count_once(b: Break, root: str) -> str:
  """The text of ``b.file`` under ``root``; ``BreakError`` naming the entry and the file unless
  ``b.exact`` occurs there exactly once."""
  path = os.path.join(root, b.file)
  if not os.path.exists(path):
    raise BreakError(f"entry {b.name!r}: file {b.file} does not exist under {root}")
  with open(path, encoding="utf-8") as fh:
    text = fh.read()
  n = text.count(b.exact)
  if n != 1:
    raise BreakError(f"entry {b.name!r}: its exact text occurs {n} times in {b.file} (must "
                     f"occur exactly once): {b.exact!r}")
  return text


def apply(b: Break, root: str) -> Optional[str]:
  """Makes the break in the tree at ``root``; returns why it is invalid (a Python file that no
  longer compiles), else None."""
  text = count_once(b, root)
  new = text.replace(b.exact, b.replacement)
  path = os.path.join(root, b.file)
  with open(path, "w", encoding="utf-8") as fh:
    fh.write(new)
  if b.file.endswith(".py"):
    try:
      compile(new, path, "exec")
    except SyntaxError as e:
      return f"{b.file} does not compile: {e}"
  return None


# -- scratch trees ----------------------------------------------------------------------------------
def _git(*args, root=ROOT, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, **kw)


def copy_tree(dest: str, rev: Optional[str] = None, root: str = ROOT) -> None:
  """The files of ``rev`` (``git archive``), or of the working tree (tracked files plus untracked
  ones git does not ignore, as they are on disk), into ``dest``."""
  if rev:
    data = _git("archive", "--format=tar", rev, root=root).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
      tar.extractall(dest, filter="tar")
    return
  names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard",
               root=root).stdout.decode().split("\0")
  for name in sorted(set(n for n in names if n)):
    src = os.path.join(root, name)
    if not os.path.lexists(src) or os.path.isdir(src):  # deleted, or a submodule
      continue
    target = os.path.join(dest, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(src, target, follow_symlinks=False)


def scratch_env(tree: str, cache_dir: str) -> dict:
  """The environment of a run in the scratch tree ``tree``: its own code first on the path, the
  shared compilation cache."""
  env = dict(os.environ)
  env["PYTHONPATH"] = tree
  env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  poses = os.path.join(ROOT, ".venv-poses", "bin", "python")  # ignored by git: not copied
  if "DEFORM3D_POSES_PYTHON" not in env and os.path.exists(poses):
    env["DEFORM3D_POSES_PYTHON"] = poses
  env.pop("PYTEST_XDIST_WORKER", None)
  env.pop("PYTEST_ADDOPTS", None)
  return env


def check_imports_from(tree: str, env: dict) -> None:
  """A Python started in ``tree`` with ``env`` imports the packages (and a script under launch/
  would) from ``tree``, not from the editable install."""
  code = ("import sys, deform3d, data_pipelines, tests, configs\n"
          "print('\\n'.join(m.__file__ for m in (deform3d, data_pipelines, tests, configs)))")
  for cwd in (tree, os.path.join(tree, "launch")):
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
      raise RuntimeError(f"importing the packages in {cwd} failed: {proc.stderr[-2000:]}")
    outside = [f for f in proc.stdout.split() if not os.path.realpath(f).startswith(
        os.path.realpath(tree) + os.sep)]
    if outside:
      raise RuntimeError(f"a process in the scratch tree {tree} imports {outside}, not the "
                         "scratch copy: check PYTHONPATH and the editable install")


# -- running ----------------------------------------------------------------------------------------
def pytest_command(ids: Sequence[str], stop_first: bool = True) -> list:
  return [sys.executable, "-m", "pytest", "-q", *(["-x"] if stop_first else []),
          "-p", "no:cacheprovider", *ids]


def run_pytest(tree: str, ids: Sequence[str], env: dict, timeout: float,
               stop_first: bool = True) -> dict:
  """pytest on ``ids`` in ``tree``: ``{"rc", "seconds", "timed_out", "summary", "output"}``; on
  a timeout the whole process group (the tests' own subprocesses too) is killed."""
  t0 = time.monotonic()
  proc = subprocess.Popen(pytest_command(ids, stop_first), cwd=tree, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  timed_out = False
  try:
    output, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    timed_out = True
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    output, _ = proc.communicate()
  except BaseException:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait()
    raise
  lines = [l for l in output.splitlines() if l.strip()]
  summary = next((l.strip("= ") for l in reversed(lines)
                  if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", l)), "")
  return {"rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
          "timed_out": timed_out, "summary": summary, "output": output}


def classify(run: dict) -> str:
  """``caught`` / ``NOT caught`` / ``invalid`` of a pytest run on a broken tree."""
  if run["timed_out"]:
    return "NOT caught"
  if run["rc"] == 1:
    return "caught"
  if run["rc"] == 0:
    return "NOT caught"
  return "invalid"  # 2: interrupted (collection error), 3: internal, 4: usage (not found), 5: none


def note(run: dict) -> str:
  if run["timed_out"]:
    return "timeout"
  if run["rc"] == 0 and "skipped" in run["summary"] and "passed" not in run["summary"]:
    return "skipped"
  return short_summary(run["summary"])


def short_summary(summary: str) -> str:
  """pytest's summary line without its time (a result's own field) and warnings count."""
  summary = re.sub(r" in [\d.]+s( \([\d:]+\))?$", "", summary)
  return re.sub(r", \d+ warnings?", "", summary)


def failure_lines(output: str, limit: int = 15) -> list:
  """The first assertion lines (pytest's ``E`` lines) of a run's output."""
  return [l[:300] for l in output.splitlines() if l.startswith("E ")][:limit]


def run_break(b: Break, rev: Optional[str], cache_dir: str, timeout: float,
              keep: bool = False) -> dict:
  tree = tempfile.mkdtemp(prefix=f"deform3d-break-{b.name}-")
  t0 = time.monotonic()
  try:
    copy_tree(tree, rev)
    try:
      invalid = apply(b, tree)
    except BreakError as e:
      invalid = str(e)
    if invalid:
      return {"result": "invalid", "note": invalid, "seconds": round(time.monotonic() - t0, 1),
              "rc": None, "output": ""}
    run = run_pytest(tree, b.tests, scratch_env(tree, cache_dir), timeout)
    return {"result": classify(run), "note": note(run), "seconds": run["seconds"],
            "rc": run["rc"], "failure": failure_lines(run["output"]),
            "output": run["output"][-4000:]}
  finally:
    if keep:
      print(f"  kept the scratch tree of {b.name}: {tree}", flush=True)
    else:
      shutil.rmtree(tree, ignore_errors=True)


def _fmt(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def revision_info(rev: Optional[str]) -> dict:
  head = _git("rev-parse", rev or "HEAD", text=True).stdout.strip()
  info = {"commit": head, "rev": rev}
  if not rev:
    changed = _git("status", "--porcelain", "--untracked-files=normal", text=True).stdout
    info["working_tree_changes"] = len([l for l in changed.splitlines() if l.strip()])
  return info


def host_info() -> str:
  """CPU count and load average when a pass starts (other work on the machine slows it)."""
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
  return f"{os.cpu_count()} CPUs, load average {load} at the start"


def write_outputs(report: dict, json_path: Optional[str], table_path: Optional[str],
                  before: Optional[dict] = None) -> None:
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path + ".tmp", "w") as fh:
      json.dump(report, fh, indent=1)
      fh.write("\n")
    os.replace(json_path + ".tmp", json_path)
  if table_path:
    os.makedirs(os.path.dirname(os.path.abspath(table_path)), exist_ok=True)
    with open(table_path + ".tmp", "w") as fh:
      fh.write(markdown(report, before))
    os.replace(table_path + ".tmp", table_path)


def counts(results: Sequence[dict]) -> dict:
  c = {"caught": 0, "NOT caught": 0, "invalid": 0}
  for r in results:
    c[r["result"]] += 1
  return c


def markdown(report: dict, before: Optional[dict] = None) -> str:
  """The pass ``report`` as a Markdown table; with ``before`` (an earlier pass's JSON), each
  entry's result and seconds in that pass beside its own."""
  where = report["commit"][:12]
  if report.get("rev"):
    where += " (`--rev`)"
  elif report.get("working_tree_changes"):
    where += f" plus {report['working_tree_changes']} uncommitted change(s) in the working tree"
  done = report["results"]
  c = counts(done)
  lines = [
      "# Breaks and the tests that catch them",
      "",
      "Generated by `tests/breaks.py`; do not edit by hand, run it again:",
      "",
      f"    {report['command']}",
      "",
      f"Run {report['started']} to {report.get('finished') or '(not finished)'} on commit "
      f"{where}; {len(done)} of {report['planned']} entries run: **{c['caught']} caught, "
      f"{c['NOT caught']} NOT caught, {c['invalid']} invalid**. The breaks' seconds add up to "
      f"{_fmt(sum(r['seconds'] for r in done))}"
      + (f"; the whole pass took {_fmt(report['total_seconds'])} "
         f"(--jobs {report.get('jobs', 1)})" if report.get("total_seconds") else "") + "." + (f" Host: {report['host']}." if report.get("host") else ""),
      "",
      "Each break is made in a scratch copy of the tree and its tests run there "
      "(`python -m pytest -q -x`). caught: the tests failed; NOT caught: they passed, were "
      "skipped or ran past the timeout; invalid: the broken file did not compile or the tests "
      "could not be collected. The exact text and replacement of each break are in "
      "`tests/breaks.py`.",
      ""]
  if report.get("baseline"):
    base = report["baseline"]
    lines += [f"Baseline (every entry's tests on the unbroken copy): "
              f"{short_summary(base['summary']) or base['rc']} in {_fmt(base['seconds'])}"
              + ("" if base["rc"] == 0 else " **(not all passed)**"), ""]
  earlier = {}
  if before:
    earlier = {r["name"]: r for r in before["results"]}
    b = counts(before["results"])
    lines += [f"Before: the pass of {before['started']} on commit {before['commit'][:12]}: "
              f"{b['caught']} of {len(before['results'])} caught. "
              "Its result and seconds per entry are the table's before columns; an entry "
              "added since shows -.", ""]
    lines += ["| break | file | tests | before | before s | result | seconds | guards |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  else:
    lines += ["| break | file | tests | result | seconds | guards |",
              "| --- | --- | --- | --- | --- | --- |"]
  for r in done:
    tests = "<br>".join(f"`{t.replace('tests/', '', 1)}`" for t in r["tests"])
    result = r["result"] if r["result"] == "caught" else f"**{r['result']}**"
    if r.get("note"):
      result += f" ({short_summary(r['note'])})"
    then = ""
    if before:
      e = earlier.get(r["name"])
      then = (f"{e['result'] if e['result'] == 'caught' else '**' + e['result'] + '**'} | "
              f"{e['seconds']:.0f} | " if e else "- | - | ")
    lines.append(f"| `{r['name']}` | `{r['file']}` | {tests} | {then}{result.replace('|', '/')}"
                 f" | {r['seconds']:.0f} | {r['why']} |")
  left = report.get("not_run") or []
  if left:
    lines += ["", f"Not run in this pass: {', '.join(f'`{n}`' for n in left)}."]
  return "\n".join(lines) + "\n"


def order_by_times(breaks: List[Break], times_path: Optional[str]) -> Dict[str, float]:
  """Earlier seconds per entry name from a previous pass's JSON (empty without one)."""
  if not times_path:
    return {}
  with open(times_path) as fh:
    return {r["name"]: float(r["seconds"]) for r in json.load(fh).get("results", [])}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tests.breaks",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--only", nargs="+", metavar="NAME", help="run these entries only")
  parser.add_argument("--list", action="store_true", help="list the entries and exit")
  parser.add_argument("--rev", help="break a `git archive` of this revision instead of the "
                      "working tree")
  parser.add_argument("--jobs", type=int, default=1, help="breaks run at once (default 1)")
  parser.add_argument("--baseline", action="store_true",
                      help="first run every selected entry's tests on the unbroken copy")
  parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                      help=f"seconds per break (default {DEFAULT_TIMEOUT}); past it: NOT caught")
  parser.add_argument("--json", help="write the JSON summary here")
  parser.add_argument("--table", help="write the Markdown table here "
                      "(e.g. docs/experiments/breaks/table.md)")
  parser.add_argument("--times", help="a previous pass's JSON: cheapest entries first, and ETA")
  parser.add_argument("--keep", action="store_true", help="keep the scratch trees")
  parser.add_argument("--render", metavar="JSON", help="write --table from this JSON of an "
                      "earlier pass and exit (nothing runs)")
  parser.add_argument("--before", metavar="JSON", help="an earlier pass's JSON whose result "
                      "and seconds per entry the table shows beside this pass's")
  args = parser.parse_args(argv)

  before = None
  if args.before:
    with open(args.before) as fh:
      before = json.load(fh)
  if args.render:
    with open(args.render) as fh:
      write_outputs(json.load(fh), None, args.table or parser.error("--render needs --table"),
                    before)
    return 0
  breaks = list(BREAKS)
  if args.only:
    known = {b.name for b in breaks}
    unknown = [n for n in args.only if n not in known]
    if unknown:
      parser.error(f"no entry named {', '.join(unknown)} (see --list)")
    breaks = [b for b in breaks if b.name in args.only]
  if args.list:
    for b in breaks:
      print(f"{b.name}\n  {b.file}: {b.why}\n  " + "\n  ".join(b.tests))
    return 0
  if args.rev:
    args.rev = _git("rev-parse", "--verify", args.rev + "^{commit}", text=True).stdout.strip()
  # Every entry must fit the tree it will break, before anything runs.
  check_root = tempfile.mkdtemp(prefix="deform3d-break-check-") if args.rev else ROOT
  try:
    if args.rev:
      copy_tree(check_root, args.rev)
    bad = problems(breaks, check_root)
  finally:
    if args.rev:
      shutil.rmtree(check_root, ignore_errors=True)
  if bad:
    print("tests/breaks.py: entries that do not fit the tree" +
          (f" of {args.rev}" if args.rev else "") + ":\n  " + "\n  ".join(bad), file=sys.stderr)
    return 2
  earlier = order_by_times(breaks, args.times)
  if earlier:
    breaks.sort(key=lambda b: earlier.get(b.name, float("inf")))

  own_cache = "JAX_COMPILATION_CACHE_DIR" not in os.environ
  cache_dir = (tempfile.mkdtemp(prefix="deform3d-break-cache-") if own_cache
               else os.environ["JAX_COMPILATION_CACHE_DIR"])
  command = "python -m tests.breaks " + " ".join(
      a if re.fullmatch(r"[\w./:=@^~+-]+", a) else repr(a)
      for a in (argv if argv is not None else sys.argv[1:]))
  report = {"command": command.strip(), **revision_info(args.rev),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "finished": None, "timeout_s": args.timeout, "jobs": args.jobs,
            "python": sys.version.split()[0], "host": host_info(), "planned": len(breaks),
            "results": [],
            "not_run": [b.name for b in breaks]}
  t_start = time.monotonic()
  try:
    probe = tempfile.mkdtemp(prefix="deform3d-break-probe-")
    try:
      copy_tree(probe, args.rev)
      check_imports_from(probe, scratch_env(probe, cache_dir))
      if args.baseline:
        ids = list(dict.fromkeys(t for b in breaks for t in b.tests))
        print(f"baseline: {len(ids)} tests on the unbroken tree ...", flush=True)
        run = run_pytest(probe, ids, scratch_env(probe, cache_dir), args.timeout * len(ids),
                         stop_first=False)
        report["baseline"] = {k: run[k] for k in ("rc", "seconds", "summary", "timed_out")}
        report["baseline"]["failure"] = failure_lines(run["output"])
        report["baseline"]["output"] = run["output"][-4000:]
        print(f"baseline: {run['summary'] or run['rc']} in {_fmt(run['seconds'])}"
              + ("" if run["rc"] == 0 else "  <-- NOT all passed: results below mean little"),
              flush=True)
    finally:
      shutil.rmtree(probe, ignore_errors=True)

    lock = threading.Lock()
    done_seconds: List[float] = []

    def one(i_b):
      i, b = i_b
      r = run_break(b, args.rev, cache_dir, args.timeout, args.keep)
      entry = {"name": b.name, "file": b.file, "tests": list(b.tests), "why": b.why, **r}
      with lock:
        report["results"].append(entry)
        report["not_run"].remove(b.name)
        done_seconds.append(r["seconds"])
        n_done = len(report["results"])
        left = report["not_run"]
        if earlier and all(n in earlier for n in left):
          eta = sum(earlier[n] for n in left) / args.jobs
        else:
          eta = sum(done_seconds) / n_done * len(left) / args.jobs
        shown = entry["result"] + (f" ({entry['note']})" if entry.get("note") else "")
        print(f"[{n_done}/{len(breaks)}] {b.name}: {shown}, {r['seconds']:.0f} s | elapsed "
              f"{_fmt(time.monotonic() - t_start)}, ETA {_fmt(eta)}", flush=True)
        write_outputs(report, args.json, args.table, before)
      return entry

    print(f"{len(breaks)} breaks, {args.jobs} at a time, timeout {args.timeout:.0f} s each; "
          f"tree: {args.rev or 'working tree'}", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
      list(pool.map(one, enumerate(breaks)))
  except KeyboardInterrupt:
    print("interrupted: the outputs hold the entries run so far", file=sys.stderr)
    return 130
  finally:
    report["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    report["total_seconds"] = round(time.monotonic() - t_start, 1)
    report["counts"] = counts(report["results"])
    order = {b.name: i for i, b in enumerate(BREAKS)}
    report["results"].sort(key=lambda r: order[r["name"]])
    write_outputs(report, args.json, args.table, before)
    if own_cache:
      shutil.rmtree(cache_dir, ignore_errors=True)
  c = report["counts"]
  print(f"{len(report['results'])} breaks: {c['caught']} caught, {c['NOT caught']} NOT caught, "
        f"{c['invalid']} invalid; {_fmt(report['total_seconds'])}", flush=True)
  for r in report["results"]:
    if r["result"] != "caught":
      print(f"  {r['result']}: {r['name']} ({r.get('note', '')})", flush=True)
  return 0 if c["NOT caught"] == 0 and c["invalid"] == 0 else 1


if __name__ == "__main__":
  sys.exit(main())
