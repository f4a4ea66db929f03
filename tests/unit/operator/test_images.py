"""The image allow-list check (pure)."""

from __future__ import annotations

import pytest

from bhiv.operator import images

ALLOWED = ["registry.example.com/bhiv/", "ghcr.io/acme/worker", "library-mirror/"]


class TestAllowed:
    @pytest.mark.parametrize(
        ("image", "ok"),
        [
            ("registry.example.com/bhiv/core:1.2", True),
            ("registry.example.com/bhiv/team/core@sha256:" + "a" * 64, True),
            ("registry.example.com/bhiv-evil/core:1", False),  # segments match whole
            ("registry.example.com/bhivcore:1", False),
            ("registry.example.com.evil.test/bhiv/core:1", False),
            ("registry.example.com/other/core:1", False),
            ("registry.example.com/bhiv/../other/core:1", False),
            ("ghcr.io/acme/worker:2", True),
            ("ghcr.io/acme/worker@sha256:" + "b" * 64, True),
            ("ghcr.io/acme/worker-two:2", False),  # a repository entry is that repository only
            ("ghcr.io/acme/worker/sub:2", False),
            ("library-mirror/app:1", True),  # Docker Hub: docker.io/library-mirror/app
            ("docker.io/library-mirror/app:1", True),
            ("nginx:1.27", False),  # docker.io/library/nginx
            ("localhost:5000/bhiv/core:1", False),
        ],
    )
    def test_prefixes_and_repositories(self, image: str, ok: bool) -> None:
        assert images.allowed(image, ALLOWED) is ok
        assert (images.refusal(image, ALLOWED) is None) is ok

    def test_no_list_allows_everything(self) -> None:
        assert images.allowed("anything.example/at/all:latest", [])
        assert images.refusal("anything.example/at/all:latest", []) is None

    def test_docker_hub_short_names_compare_fully_qualified(self) -> None:
        assert images.allowed("nginx:1.27", ["docker.io/library/nginx"])
        assert images.allowed("docker.io/library/nginx:1.27", ["nginx"])
        assert not images.allowed("nginxx:1", ["nginx"])
        assert images.allowed("localhost:5000/x:1", ["localhost:5000/"])

    def test_refusal_names_the_image_and_the_setting(self) -> None:
        message = images.refusal("evil.example/miner:1", ALLOWED)
        assert message and "evil.example/miner:1" in message and "allowedImages" in message
