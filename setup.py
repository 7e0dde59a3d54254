"""deform3d: cross-modal 3D deformable transformer for action recognition in JAX/Flax."""
from setuptools import find_packages, setup

# Version ranges admit the GPU stack (Python 3.12, jax 0.11) while the lower bounds are the
# versions tested on Python 3.11 (jax 0.10.2). CI installs exactly the lower bounds' releases.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "ml-collections>=1.1.0,<2",
    "chex>=0.1.92,<0.2",
    "numpy>=2.0,<3",
    "matplotlib>=3.9,<4",
    "tensorboardX>=2.6.5,<3",  # summaries without importing TensorFlow
]
EXTRAS = {
    # The input pipeline and the embedded dataset (never imported by model/ops/train code):
    # all that README's first command needs.
    "data": [
        "tensorflow-cpu==2.21.0",
    ],
    # Building the real datasets from their raw files and decoding videos (your own clip):
    # ``pip install -e '.[data,convert]'`` (about 450 MB more: TFDS with pyarrow, Beam, PyAV).
    "convert": [
        "tensorflow-datasets==4.9.10",  # the builders (records written through TFDS)
        "importlib_resources>=6,<8",   # needed by tensorflow-datasets' builders, not declared by it
        "scipy>=1.11,<2",              # Penn Action .mat labels
        "apache-beam==2.77.0",         # dataset builds (DirectRunner locally, any runner at scale)
        "av==18.1.0",                  # video decoding (PyAV, FFmpeg inside the wheel)
    ],
    # Accelerators, at the jax that CI tests (docs/accelerators.md): NVIDIA GPUs (CUDA 12 wheels,
    # no local CUDA toolkit needed) and Cloud TPU VMs (libtpu). The tpu extra also lets any
    # Linux host compile programs for TPU topologies (launch/plan.py, tests/test_lowering.py).
    "gpu": [
        "jax[cuda12]==0.10.2",
    ],
    "tpu": [
        "jax[tpu]==0.10.2",
    ],
    "test": [
        "jax[tpu]==0.10.2",  # libtpu: the TPU lowering and compile tests (tests/test_lowering.py)
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "torch==2.13.0",  # CPU build; reference for grid_sample and the benchmark
        "scipy>=1.11,<2",
        "nbclient==0.11.0",   # runs notebooks/quickstart.ipynb in the suite
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
}

setup(
    name="deform3d",
    version="0.1.0",
    description="Cross-modal 3D deformable transformer for action recognition (JAX/Flax)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["deform3d", "deform3d.*", "data_pipelines",
                                    "data_pipelines.*", "configs", "configs.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
