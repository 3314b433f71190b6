"""The versions of the packages that produce kdeval's numbers, recorded beside results."""

from __future__ import annotations

import platform
from importlib import metadata

RECORDED_PACKAGES = ("kdeval", "torch", "torchvision", "pycocotools", "tidecv", "numpy", "pandas", "matplotlib", "jinja2")


def package_versions() -> dict[str, str]:
    """python and each of RECORDED_PACKAGES that is installed ('not installed' otherwise)."""
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "kdeval":  # run from a checkout rather than installed
                from kdeval import __version__

                versions[package] = __version__
            else:
                versions[package] = "not installed"
    return versions
