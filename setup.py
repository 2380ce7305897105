"""Packaging for tfode: neural ODEs for TensorFlow and Keras."""

from setuptools import find_packages, setup

setup(
    name="tfode",
    version="0.2.0",
    description="Neural ordinary differential equations for TensorFlow, Keras and TensorFlow Probability.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfode", "tfode.*"]),
    install_requires=[
        "tensorflow>=2.18,<2.23",
        # TFP 0.25 does not import without tf-keras; the [tf] extra brings it.
        "tensorflow-probability[tf]>=0.24,<0.27",
        "keras>=3.0,<4",
        "numpy>=1.26,<3",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "scipy>=1.11,<2", "ruff>=0.5"],
        "examples": ["scikit-learn>=1.3,<2", "matplotlib>=3.7,<4"],
        # PredictRequest/gRPC for examples/serving_client.py --server, and the warm-up records' parse test.
        "serving": ["tensorflow-serving-api>=2.18,<2.23", "grpcio>=1.24,<2"],
        # tfode.datasets.hopper regenerates Rubanova et al.'s MuJoCo Hopper set; dm-control 1.0.50 fails
        # to import with mujoco 4.0.0, so both are pinned to a pair measured to work.
        "data": ["dm-control==1.0.50", "mujoco==3.17.0"],
        # Peers for benchmarks; torch==2.13.0 is the CPU build available offline here.
        "bench": [
            "scipy>=1.11,<2", "torch==2.13.0", "torchdiffeq>=0.2.4", "torchode>=1.0,<2", "jax>=0.4.30", "diffrax>=0.6",
        ],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Mathematics",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
