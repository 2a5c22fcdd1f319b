"""Build glue that pyproject.toml cannot say: the tools are edited and run from
tools/ in a checkout, and ship in the wheel as ocho/tools/, beside the package
that runs them (Settings finds either)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ocho", "ocho.*"]), "ocho.tools"],
    package_dir={"ocho.tools": "tools"},
)
