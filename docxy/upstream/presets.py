"""Registries a single line enables: ``upstreams = ["ghcr.io", "quay.io"]``.

A preset is only a registry URL (and Docker Hub's ``library/`` rule); everything else about an
upstream (mirror host names, credentials) is configured as for any other. ``docker.io`` is
``[upstream]`` itself, the default that Docker's ``registry-mirrors`` uses: naming it in the list
is allowed and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAME = "docker.io"


@dataclass(frozen=True, slots=True)
class Preset:
    registry: str
    library_prefix: bool = False


PRESETS: dict[str, Preset] = {
    DEFAULT_NAME: Preset("https://registry-1.docker.io", library_prefix=True),
    "ghcr.io": Preset("https://ghcr.io"),
    "quay.io": Preset("https://quay.io"),
    "registry.k8s.io": Preset("https://registry.k8s.io"),
    "gcr.io": Preset("https://gcr.io"),
    "mcr.microsoft.com": Preset("https://mcr.microsoft.com"),
    "nvcr.io": Preset("https://nvcr.io"),
}
