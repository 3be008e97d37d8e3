"""Packaging: metadata, dependencies and console scripts are in setup.cfg; this file adds the CLIs of tools/.

setup.cfg cannot install a folder under another package name, so ``tools/`` becomes the package ``detkit_tools``
here (the console scripts ``detkit-train``, ``detkit-detect``, ... call its modules); ``tools/*.py`` stay
runnable as scripts from a checkout where detkit is installed (``pip install -e .``).
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["detkit", "detkit.*"]) + ["detkit_tools"],
    package_dir={"detkit_tools": "tools"},
)
