"""Explainability: joint, frame and sampling-point importance from the model's attention maps,
and their PNGs. ``launch/explain.py`` runs it on a checkpoint; docs/explain.md defines the
numbers."""
from deform3d.explain.importance import (explain_clip, frame_importance, joint_importance,
                                         person_joints, point_frame, sampling_points,
                                         token_frames, top_predictions, uniform_joint_share)
from deform3d.explain.plots import plot_heatmap, plot_sampling_points, plot_skeleton, save_all
from deform3d.explain.clips import write_explanations

__all__ = ["explain_clip", "frame_importance", "joint_importance", "person_joints", "point_frame",
           "sampling_points", "token_frames", "top_predictions", "uniform_joint_share", "plot_heatmap",
           "plot_sampling_points", "plot_skeleton", "save_all", "write_explanations"]
