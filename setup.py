"""Package layout that pyproject.toml cannot say: the top-level ``conf/`` tree ships inside the
package as ``fex.conf`` (its YAML files as package data), so installed console scripts find the
same Hydra configs as a checkout. Everything else is in pyproject.toml."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
CONF = ["fex.conf", *sorted("fex.conf." + ".".join(d.relative_to(HERE / "conf").parts)
                             for d in (HERE / "conf").rglob("*") if d.is_dir() and any(d.glob("*.yaml")))]

setup(packages=find_packages(include=["fex", "fex.*"]) + CONF,
      package_dir={"fex.conf": "conf"},
      package_data={**{p: ["*.yaml"] for p in CONF}, "fex.serve": ["static/*.html"]})
