"""constraints.txt: the exact versions the appliance image installs (see its header).

The image is what users run; its versions must be the ones CI built and pulled through, each
within pyproject.toml's ranges (a pin outside one would make pip's resolver fail the image
build, or worse, a range we no longer honour), and every package the mirror and the renewer
need must be pinned (one left out would float to whatever PyPI has at build time).
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.scriptbox import REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)$")


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"pinned twice: {name}"
        found[name] = Version(match[2])
    return found


def shipped() -> list[Requirement]:
    """What the Dockerfile installs: the package's dependencies, its scheduler and shared
    extras, and certbot."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    texts = [*project["dependencies"], *extras["scheduler"], *extras["shared"], "certbot"]
    return [Requirement(text) for text in texts]


def test_the_dockerfile_installs_with_the_constraints() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt ./" in dockerfile
    logical = dockerfile.replace("\\\n", " ").splitlines()  # continuation lines joined
    [install] = [line for line in logical if "pip install" in line]
    assert "-c constraints.txt '.[scheduler,shared]' certbot" in install, install


def test_every_shipped_requirement_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in shipped():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]} outside pyproject's {requirement}"
        )


def test_neither_pip_nor_setuptools_is_pinned() -> None:
    """The build backend comes from build isolation (setuptools>=68, pyproject's
    build-system), and pip from the base image: a pin of either, as a venv's freeze of them
    gives, would only clash with those."""
    assert not {"pip", "setuptools"} & set(pins())
