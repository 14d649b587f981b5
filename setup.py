"""Packaging for cfaug. Metadata lives here; pyproject.toml only names the build system."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "cfaug" / "version.py").read_text()).group(1)

setup(
    name="cfaug",
    version=VERSION,
    description="Counterfactual image augmentation from independent shape, texture and background mechanisms (CGN).",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["cfaug", "cfaug.*"]),
    package_data={"cfaug": ["py.typed", "weights/*.safetensors", "weights/*.md", "data/*"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "kornia>=0.7",
        "numpy",
        "safetensors>=0.4",
        "tqdm",
        "pillow",
        "pyyaml",
    ],
    extras_require={
        "imagenet": ["pytorch-pretrained-biggan>=0.1.1", "scipy", "onnx"],
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
        "test": ["pytest>=7"],
    },
    entry_points={
        "console_scripts": ["cfaug = cfaug.cli:main"],
        "cfaug.backends": [
            "mnist = cfaug.backends.mnist:MnistBackend",
            "biggan = cfaug.backends.biggan:BigGANBackend",
            "parts = cfaug.backends.parts:PartsBackend",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
