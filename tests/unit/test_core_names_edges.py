"""Edges of ``docxy.core.names`` that mutation testing found untested: the repository name's
length limit as a number (not as the module's own constant, which a change would move along),
and image references as a person types them: every Docker Hub host, space around them, and
that one is a frozen value."""

from __future__ import annotations

import dataclasses

import pytest

from docxy.core.errors import NameInvalid
from docxy.core.names import parse_image_ref, parse_v2_path, validate_name


def test_a_name_of_255_characters_is_valid() -> None:
    name = "/".join(["a" * 63] * 4)  # 4 * 63 + 3 slashes = 255
    assert len(name) == 255
    assert validate_name(name) == name
    assert parse_v2_path(f"/v2/{name}/manifests/latest") is not None


@pytest.mark.parametrize("name", ["a" * 256, "/".join(["a" * 63] * 4) + "b"])
def test_a_name_of_256_characters_is_not(name: str) -> None:
    assert len(name) == 256
    with pytest.raises(NameInvalid):
        validate_name(name)
    with pytest.raises(NameInvalid):
        parse_v2_path(f"/v2/{name}/manifests/latest")


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_every_docker_hub_host_is_docker_hub(host: str) -> None:
    ref = parse_image_ref(f"{host}/redis:7")
    assert ref.on_hub()
    assert ref.name == "library/redis"  # official images are under library/ on Docker Hub
    assert parse_image_ref(f"{host}/redis:7", library_prefix=False).name == "redis"


def test_another_registry_is_not_docker_hub() -> None:
    ref = parse_image_ref("index.docker.io.example/redis:7")
    assert not ref.on_hub() and ref.name == "redis"


@pytest.mark.parametrize("text", ["  redis:7", "redis:7\n", "\tredis:7 "])
def test_space_around_an_image_reference_is_not_part_of_it(text: str) -> None:
    ref = parse_image_ref(text)
    assert (ref.domain, ref.name, ref.tag) == (None, "library/redis", "7")


def test_an_image_reference_is_a_frozen_value() -> None:
    ref = parse_image_ref("ghcr.io/a/b:1")
    assert ref == parse_image_ref("ghcr.io/a/b:1")
    assert len({ref, parse_image_ref("ghcr.io/a/b:1")}) == 1  # hashable, equal ones alike
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "2"  # type: ignore[misc]
