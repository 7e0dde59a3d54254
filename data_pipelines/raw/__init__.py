"""Readers of the paper's raw dataset formats (NumPy + PyAV/SciPy; no TensorFlow).

Each source module turns one raw item (a video with its pose file, a ``.mat`` label file, a pyskl
annotation) into a ``data_pipelines.records.Sample``; ``data_pipelines/tfds_builders.py`` wires them
into TFDS/Beam builders. Every error names the file and the field that is wrong.
"""
