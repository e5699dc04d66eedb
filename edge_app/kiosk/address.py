"""``--web HOST:PORT``: the address grammar, and which hosts are this machine's own (no aiohttp needed)."""

from __future__ import annotations

import ipaddress

from edge_app.runtime.errors import EdgeclsError


def parse_web_address(value: str, allow_remote: bool = False) -> tuple[str, int]:
    """``"8080"``, ``":8080"``, ``"127.0.0.1:8080"``, ``"[::1]:8080"`` → ``(host, port)``.

    Raises:
        EdgeclsError: a malformed address, or a non-loopback host without ``allow_remote``.

    Example:
        >>> parse_web_address("8080")
        ('127.0.0.1', 8080)
    """
    text = value.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise EdgeclsError(f"--web {value}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not allow_remote and not is_loopback(host):
        raise EdgeclsError(f"--web {value} would let other machines watch this camera; add --allow-remote "
                           "if that is what you want (and put it behind a firewall), or use 127.0.0.1:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
