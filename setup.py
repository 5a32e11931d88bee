"""gpe_jax: geometry-preserving latent generative models in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib_resources>=6",  # needed by tensorflow-datasets 4.9.10
    "ml-collections>=1.1,<2",
    "chex>=0.1.92,<0.2",
    "absl-py>=2.1",
    "numpy>=1.26",
    "scikit-learn>=1.5",
    "scipy>=1.11",  # exact minibatch OT (linear_sum_assignment)
    "matplotlib>=3.8",
    "pillow>=10",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
]

setup(
    name="gpe_jax",
    version="0.1.0",
    description="Geometry-preserving encoders (GPE) and Gromov-Monge embedding GANs in JAX/Flax",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gpe_jax", "gpe_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
        "test": ["pytest>=8", "pytest-xdist>=3", "filelock>=3", "nbclient>=0.10", "nbformat>=5.10",
                 "ipykernel>=6"],
    },
)
