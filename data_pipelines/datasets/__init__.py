"""The paper's datasets, one module each: raw-format reader, loader (raw item -> ``Sample``) and
TFDS/Beam builder together. Every builder writes the one schema of ``data_pipelines/records.py``.

| builder | module | configs | raw files in ``--manual_dir`` |
| --- | --- | --- | --- |
| ``ntu_rgbd`` | ``ntu`` | ``ntu60_xsub``, ``ntu60_xview``, ``ntu120_xsub``, ``ntu120_xset`` | ``*.skeleton``, ``*_rgb.avi`` |
| ``ntu_rgbd_hrnet`` | ``ntu`` (poses by ``pyskl``) | the same four | ``ntu60_hrnet.pkl`` / ``ntu120_hrnet.pkl``, ``*_rgb.avi`` |
| ``penn_action`` | ``penn`` | ``default`` | ``labels/NNNN.mat``, ``frames/NNNN/*.jpg`` |
| ``finegym`` | ``finegym`` (poses by ``pyskl``) | ``gym99`` | ``gym99_*element*.txt``, ``gym99_categories.txt``, ``gym_hrnet.pkl``, ``videos/{id}.*`` |

``common`` holds what they share (errors, video decoding, resampling, the person choice, the
Beam plumbing). Build with ``python launch/build_dataset.py`` (docs/datasets.md).
"""
from data_pipelines.datasets.finegym import Finegym
from data_pipelines.datasets.ntu import NtuRgbd, NtuRgbdHrnet
from data_pipelines.datasets.penn import PennAction

BUILDERS = {"ntu_rgbd": NtuRgbd, "ntu_rgbd_hrnet": NtuRgbdHrnet, "penn_action": PennAction,
            "finegym": Finegym}
