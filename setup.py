"""Package metadata is read from settings.ini (the nbdev 2.x convention)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini", encoding="utf-8")
c = cfg["DEFAULT"]

setuptools.setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    author=c["author"],
    author_email=c["author_email"],
    license="Apache-2.0",
    python_requires=f">={c['min_python']}",
    packages=setuptools.find_packages(include=[c["lib_path"], c["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=c["requirements"].split(),
    extras_require={"dev": c["dev_requirements"].split(), "ray": ["ray==2.60.0"]},
    entry_points={
        "console_scripts": c["console_scripts"].split(),
        "nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"],
    },
    zip_safe=False,
)
