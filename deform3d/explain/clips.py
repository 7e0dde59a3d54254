"""One call from clips to explanation files: ``write_explanations`` runs the model with its
attention maps (and, for another ``method``, ``methods.explain_batch``), and writes each clip's
PNGs and JSON. ``launch/explain.py`` (clips of a split) and ``launch/predict.py`` (a user's
video) share it."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import jax
import numpy as np

from deform3d.explain import methods
from deform3d.explain.importance import explain_clip, person_joints
from deform3d.explain.plots import save_all
from deform3d.models import attention_maps


def write_explanations(out: str, model, params, frames, keypoints, pixels, *,
                       stems: Sequence[str], captions: Sequence[str],
                       joint_names: Sequence[str], bones: Sequence[tuple],
                       class_names: Optional[Sequence[str]] = None, method: str = "attention",
                       blocks: Optional[Sequence[int]] = None, steps: int = 16,
                       extra: Optional[Sequence[dict]] = None) -> list:
  """Explains ``frames (B, T, H, W, 3)`` / ``keypoints (B, [P,] T, J, D)`` (model inputs) by
  ``method`` and writes ``{stem}_skeleton.png``, ``_heatmap.png``, ``_points.png`` and
  ``{stem}.json`` per clip into ``out`` over ``pixels (B, T, H, W, 3)`` uint8. Every PNG's title
  is ``[method] caption, predicted NAME (prob)``. Returns ``(explanations, joint names)``: the
  JSON dicts (with ``extra[i]`` merged in) and the names of the ``P * J`` joints."""
  os.makedirs(out, exist_ok=True)
  variables = {"params": params}
  logits, maps = attention_maps(model, variables, frames, keypoints)
  logits, maps = np.asarray(logits), jax.tree.map(np.asarray, maps)
  result = None if method == "attention" else methods.explain_batch(
      method, model, variables, frames, keypoints, steps=steps)
  keypoints = np.asarray(keypoints)
  explanations, names = [], list(joint_names)
  for i, stem in enumerate(stems):
    kp, names, all_bones, present = person_joints(keypoints[i], joint_names, bones)
    e = explain_clip(maps, model, i, blocks=blocks, num_frames=frames.shape[1],
                     joint_names=names, logits=logits, class_names=class_names,
                     present=present if len(present) > 1 else None)
    if result is not None:
      e.update(methods.as_explanation(result, i, present, e))
    e.update(method=method, **(extra[i] if extra else {}))
    pred = e["prediction"][0]
    title = f"[{method}] {captions[i]}, predicted {pred['name']} ({pred['prob']:.2f})"
    save_all(out, stem, pixels[i], kp, e, all_bones, title=title)
    with open(os.path.join(out, f"{stem}.json"), "w") as fh:
      json.dump(e, fh)
    explanations.append(e)
  return explanations, names
