"""The crop resize on the accelerator (``dataset.resize="device"``) against the host pipeline's."""
import jax
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data_pipelines import input_pipeline, records  # noqa: E402
from deform3d.ops.resize import resize_crops  # noqa: E402
from deform3d.pixels import normalize_pixels  # noqa: E402
from tests.test_data import PERM, J, _marker_sample  # noqa: E402

resize = jax.jit(resize_crops, static_argnums=2)  # (frames, crop, out, flip=None)


def _rel(got, want):
  return np.linalg.norm(got - want) / np.linalg.norm(want)


@pytest.mark.parametrize("out", [17, 48])
def test_resize_crops_equals_tensorflows_antialiased_resize(rng, out):
  """Crops smaller than, equal to and larger than the output (so both the plain bilinear case
  and the widened kernel of a shrink), each padded to 64 with other values behind it, against
  ``tf.image.resize(antialias=True)`` of the crop alone (an independent implementation); with
  ``flip``, every other one mirrored."""
  sizes = [5, 17, 30, 48, 51, 64]
  pad = 64
  frames = rng.integers(0, 256, (len(sizes), 3, pad, pad, 3)).astype(np.uint8)  # the padding
  want = []                                                                    # is noise here
  for i, s in enumerate(sizes):
    want.append(tf.image.resize(tf.cast(frames[i, :, :s, :s], tf.float32), [out, out],
                                antialias=True).numpy())
  want = np.stack(want)
  flip = np.array([i % 2 == 1 for i in range(len(sizes))])
  for f in (None, flip):
    got = np.asarray(resize(frames, np.array(sizes, np.int32), out, f))
    assert got.shape == want.shape == (len(sizes), 3, out, out, 3)
    ref = want if f is None else np.where(f[:, None, None, None, None], want[..., ::-1, :], want)
    assert _rel(got, ref) < 1e-5, _rel(got, ref)
    assert np.abs(got - ref).max() < 1e-2  # pixel levels


def test_resize_crops_of_padding_examples_are_finite():
  """Batches padded with all-zero examples (crop size 0) must not put NaN into the step."""
  got = np.asarray(resize(np.zeros((2, 1, 8, 8, 3), np.uint8), np.array([0, 8], np.int32), 4))
  assert np.isfinite(got).all()


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("image_size", [20, 40])
def test_device_resize_gives_the_host_pipelines_frames(tmp_path, train, image_size):
  """``resize="device"``: the host sends each flipped crop padded to ``crop_pad``, and
  ``resize_crops`` + normalizing in the step give the host pipeline's float32 frames (random
  crops of 0.5-0.8 x the short side of 64x96 frames that differ per index, flips, evaluation
  clips; crops shrunk to 20 px and enlarged to 40 px); keypoints, labels and ids identical."""
  samples = [_marker_sample(i) for i in range(5)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  kw = dict(num_frames=4, image_size=image_size, num_joints=J, batch_size=5, train=train,
            seed=3, flip_perm=PERM, crop_scale=(0.5, 0.8), cache=False, num_clips=2)
  host = next(input_pipeline.iterate(input_pipeline.make_dataset(str(tmp_path), "train", **kw)))
  dev = next(input_pipeline.iterate(input_pipeline.make_dataset(
      str(tmp_path), "train", frames_dtype="uint8", resize="device", crop_pad=64, **kw)))
  lead = (5,) if train else (5, 2)
  assert dev["frames"].shape == lead + (4, 64, 64, 3) and dev["frames"].dtype == np.uint8
  assert dev["crop"].shape == (5,) and dev["crop"].dtype == np.int32
  assert set(dev) == set(host) | {"crop", "flip"}
  for key in ("keypoints", "label", "id"):
    np.testing.assert_array_equal(dev[key], host[key])
  short = 64
  crops = dev["crop"]
  if train:
    assert (crops >= int(0.5 * short)).all() and (crops <= int(0.8 * short)).all()
    assert len(set(crops.tolist())) > 1
  else:
    assert (crops == short).all()
  # Nothing but zeros outside each crop.
  for i, s in enumerate(crops):
    assert not dev["frames"][i, ..., s:, :, :].any() and not dev["frames"][i, ..., :, s:, :].any()
  assert dev["flip"].dtype == bool and dev["flip"].shape == (5,)
  assert set(dev["flip"].tolist()) == ({True, False} if train else {False})
  got = np.asarray(normalize_pixels(resize(dev["frames"], dev["crop"], image_size, dev["flip"])))
  assert got.shape == host["frames"].shape
  assert _rel(got, host["frames"]) < 1e-5, _rel(got, host["frames"])
  assert np.abs(got - host["frames"]).max() * input_pipeline.STD.max() < 1e-2  # pixel levels


def test_device_resize_needs_uint8_a_pad_and_a_large_enough_pad(tmp_path):
  samples = [_marker_sample(i) for i in range(2)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  kw = dict(num_frames=4, image_size=20, num_joints=J, batch_size=2, train=False, cache=False)
  with pytest.raises(ValueError, match="resize='device' needs frames_dtype='uint8' and crop_pad"):
    input_pipeline.make_dataset(str(tmp_path), "train", resize="device", crop_pad=64, **kw)
  with pytest.raises(ValueError, match="resize must be one of"):
    input_pipeline.make_dataset(str(tmp_path), "train", resize="gpu", **kw)
  ds = input_pipeline.make_dataset(str(tmp_path), "train", frames_dtype="uint8",
                                   resize="device", crop_pad=48, **kw)  # the short side is 64
  with pytest.raises(input_pipeline.DataError, match="larger than dataset.crop_pad=48"):
    next(input_pipeline.iterate(ds, source=(str(tmp_path), "train")))


def test_resize_cost_reports_flops_and_times():
  """The benchmarks' measure of the step's resize (``--suite paper`` rows of configs with
  ``dataset.resize="device"``, and the input benchmark): XLA's FLOPs grow with the batch as
  the two dense weight products predict, and the times are ordered."""
  from benchmarks.timing import resize_cost
  one, two = (resize_cost(b, 2, 32, 24, repeats=2) for b in (1, 2))
  # Per clip and frame: 24x32 weights times 32x32x3 pixels, then 24x32 times 24x32x3, 2 FLOPs
  # per multiply-add.
  want = 2 * 2 * (24 * 32 * 32 * 3 + 24 * 24 * 32 * 3)
  assert one["gflop"] * 1e9 == pytest.approx(want, rel=0.2)
  assert two["gflop"] == pytest.approx(2 * one["gflop"], rel=0.05)
  for r in (one, two):
    assert 0 < r["ms"]["min"] <= r["ms"]["median"] <= r["ms"]["max"] and r["compile_s"] > 0
