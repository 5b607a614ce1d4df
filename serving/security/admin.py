"""Who may change what is served: model control, traffic tables and rollouts are admin calls,
accepted only from this machine's loopback until authentication is configured."""

from __future__ import annotations

import ipaddress

from serving.errors import PermissionDeniedError


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address as the transport reports its peer) is this machine's
    loopback; ``unix`` sockets count as local."""
    if host == "unix":
        return True
    try:
        address = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def require_admin(peer: str | None) -> None:
    """Refuse an admin call from ``peer`` (the address the transport reports) unless it is
    local."""
    if not is_loopback(peer):
        raise PermissionDeniedError(
            f"model control is accepted only from loopback until authentication is "
            f"configured; refused for {peer or 'an unknown peer'}"
        )
