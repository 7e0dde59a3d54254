"""PNGs of an explanation (matplotlib, Agg backend): skeleton, heatmap, sampling points."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from deform3d.explain.importance import point_frame


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def to_pixels(xy: np.ndarray, size: int) -> np.ndarray:
  """Normalized ``[-1, 1]`` coordinates (``align_corners=False``) -> pixel coordinates."""
  return ((np.asarray(xy) + 1.0) * size - 1.0) / 2.0


def _frame_columns(num_frames: int, max_columns: int) -> np.ndarray:
  return np.unique(np.linspace(0, num_frames - 1, min(num_frames, max_columns)).round().astype(int))


def plot_skeleton(path: str, frames: np.ndarray, keypoints: np.ndarray, importance: np.ndarray,
                  bones: Sequence[tuple], frame_importance: Optional[np.ndarray] = None,
                  title: str = "", max_columns: int = 8) -> str:
  """Frames ``(T, S, S, 3)`` uint8 with the skeleton; joint ``j`` of frame ``t`` drawn with size
  and colour from ``importance[t, j]`` (a row sums to 1). Joints with score 0 are not drawn."""
  plt = _plt()
  t, size = frames.shape[0], frames.shape[1]
  cols = _frame_columns(t, max_columns)
  vmax = float(importance.max())
  fig, axes = plt.subplots(1, len(cols), figsize=(2.1 * len(cols), 2.6), squeeze=False)
  cmap = plt.get_cmap("inferno")
  for ax, f in zip(axes[0], cols):
    ax.imshow(frames[f])
    xy = to_pixels(keypoints[f, :, :2], size)
    present = keypoints[f, :, 2] > 0
    for a, b in bones:
      if present[a] and present[b]:
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], color="white", lw=1.0, alpha=0.8)
    w = importance[f] / vmax
    ax.scatter(xy[present, 0], xy[present, 1], s=8 + 140 * w[present], c=w[present], cmap=cmap,
               vmin=0, vmax=1, edgecolors="white", linewidths=0.4, zorder=3)
    label = f"frame {f}"
    if frame_importance is not None:
      label += f"\nframe weight {frame_importance[f]:.2f}"
    ax.set_title(label, fontsize=7)
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_xticks([]), ax.set_yticks([])
  fig.suptitle(title or "joint importance (size and colour)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_heatmap(path: str, importance: np.ndarray, joint_names: Sequence[str],
                 frame_importance: np.ndarray, lift: np.ndarray,
                 lift_per_block: Optional[np.ndarray] = None, title: str = "") -> str:
  """Time x joints heatmap of ``importance (T, J)`` with the frame importance beside it, each
  joint's lift over the uniform share below it, and (optionally) the lift of every block."""
  plt = _plt()
  t, j = importance.shape
  nb = 0 if lift_per_block is None else lift_per_block.shape[0]
  fig = plt.figure(figsize=(max(6.0, 0.42 * j + 2.5), 0.32 * (t + nb) + 3.8))
  heights = (t, 4) + ((nb + 1,) if nb else ())
  grid = fig.add_gridspec(len(heights), 2, width_ratios=(j, 3), height_ratios=heights,
                          wspace=0.05, hspace=0.12)
  ax = fig.add_subplot(grid[0, 0])
  im = ax.imshow(importance, aspect="auto", cmap="viridis")
  ax.set_ylabel("frame")
  ax.set_xticks([])
  ax.set_yticks(range(t))
  ax.set_title(title or "share of the cross token's joint attention", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
  side = fig.add_subplot(grid[0, 1], sharey=ax)
  side.barh(range(t), frame_importance, color="tab:orange")
  side.set_xlabel("frame weight", fontsize=7)
  side.tick_params(labelleft=False, labelsize=6)
  low = fig.add_subplot(grid[1, 0])
  colours = np.where(lift >= 1.0, "tab:red", "tab:gray")
  low.bar(range(j), lift, color=colours)
  low.axhline(1.0, color="black", lw=0.8, ls="--")
  low.set_xlim(-0.5, j - 0.5)
  low.set_xticks(range(j))
  low.set_xticklabels([] if nb else joint_names, rotation=70, fontsize=7)
  low.set_ylabel("lift over\nuniform", fontsize=7)
  if nb:
    per = fig.add_subplot(grid[2, 0])
    im2 = per.imshow(lift_per_block, aspect="auto", cmap="RdBu_r", vmin=0,
                     vmax=max(2.0, float(lift_per_block.max())))
    per.set_yticks(range(nb))
    per.set_yticklabels([f"block {b}" for b in range(nb)], fontsize=6)
    per.set_xticks(range(j))
    per.set_xticklabels(joint_names, rotation=70, fontsize=7)
    fig.colorbar(im2, ax=per, fraction=0.03, pad=0.01, label="lift")
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_sampling_points(path: str, frames: np.ndarray, blocks: Sequence[dict],
                         title: str = "", max_columns: int = 8) -> str:
  """One row per block: frames with that block's deformable sampling points drawn on the frame
  nearest their time coordinate, sized by the attention they receive, coloured by group."""
  plt = _plt()
  t, size = frames.shape[0], frames.shape[1]
  cols = _frame_columns(t, max_columns)
  rows = max(len(blocks), 1)
  fig, axes = plt.subplots(rows, len(cols), figsize=(2.1 * len(cols), 2.2 * rows + 0.4),
                           squeeze=False)
  colours = plt.get_cmap("tab10")
  for r, block in enumerate(blocks):
    pts, wt = block["points"], block["weight"]
    # Each point goes to the shown frame nearest its time coordinate.
    column = np.abs(point_frame(pts[..., 2], t)[..., None] - cols).argmin(axis=-1)  # (G, Ns)
    scale = 300.0 / max(float(wt.max()), 1e-12)
    for c, (ax, f) in enumerate(zip(axes[r], cols)):
      ax.imshow(frames[f])
      for g in range(pts.shape[0]):
        sel = column[g] == c
        xy = to_pixels(pts[g, sel, :2], size)
        ax.scatter(xy[:, 0], xy[:, 1], s=4 + scale * wt[g, sel], color=colours(g % 10),
                   edgecolors="white", linewidths=0.3, alpha=0.85, label=f"group {g}")
      ax.set_xlim(-0.5, size - 0.5)
      ax.set_ylim(size - 0.5, -0.5)
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title(f"frame {f}", fontsize=7)
      if f == cols[0]:
        ax.set_ylabel(f"block {block['block']}", fontsize=7)
  if not blocks:
    axes[0, 0].text(0.5, 0.5, "no RGB stream (use_rgb=False)", ha="center")
  fig.suptitle(title or "3-D deformable sampling points (size = attention received)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def save_all(out_dir: str, stem: str, frames: np.ndarray, keypoints: np.ndarray,
             explanation: dict, bones: Sequence[tuple], title: str = "") -> list:
  """Writes ``{stem}_skeleton.png``, ``{stem}_heatmap.png`` and ``{stem}_points.png``."""
  os.makedirs(out_dir, exist_ok=True)
  imp = np.asarray(explanation["joint_importance"])
  frame_imp = np.asarray(explanation["frame_importance"])
  blocks = [{"block": p["block"], "points": np.asarray(p["points_xyz"]),
             "weight": np.asarray(p["weight"])} for p in explanation["sampling_points"]]
  return [
      plot_skeleton(os.path.join(out_dir, f"{stem}_skeleton.png"), frames, keypoints, imp,
                    bones, frame_imp, title=title),
      plot_heatmap(os.path.join(out_dir, f"{stem}_heatmap.png"), imp,
                   explanation["joint_names"], frame_imp, np.asarray(explanation["joint_lift"]),
                   np.asarray(explanation["joint_lift_per_block"]), title=title),
      plot_sampling_points(os.path.join(out_dir, f"{stem}_points.png"), frames, blocks,
                           title=title),
  ]
