"""The X-Forwarded-For walk with trusted and untrusted peers."""

from __future__ import annotations

import pytest

from app.http.client_address import client_address, parse_networks

NGINX = parse_networks(["127.0.0.1", "172.31.250.0/24", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),  # an untrusted peer: the header is ignored
        ("203.0.113.9", None, "203.0.113.9"),
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("172.31.250.3", "1.1.1.1, 198.51.100.7", "198.51.100.7"),  # the right-most untrusted hop
        ("172.31.250.3", "198.51.100.7, 172.31.250.9", "198.51.100.7"),  # skipping a trusted hop
        ("172.31.250.3", "172.31.250.9, 127.0.0.1", "172.31.250.9"),  # all trusted: the first
        ("172.31.250.3", "garbage, 198.51.100.7", "198.51.100.7"),
        ("172.31.250.3", "not-an-address", "172.31.250.3"),  # nothing usable: the peer
        ("172.31.250.3", "[2001:db8::1]:443", "2001:db8::1"),
        ("172.31.250.3", "198.51.100.7:5123", "198.51.100.7"),
        ("fd00::5", "2001:db8::2", "2001:db8::2"),
        ("::ffff:127.0.0.1", "198.51.100.8", "198.51.100.8"),  # an IPv4 peer on a dual-stack socket
    ],
)
def test_the_walk(peer: str, header: str | None, expected: str) -> None:
    assert client_address(peer, header, NGINX) == expected


def test_nobody_trusted_means_the_peer_always() -> None:
    assert client_address("127.0.0.1", "198.51.100.7", []) == "127.0.0.1"
