"""Whether ml-commons will count the service's host as private, and so refuse the connector without a setting.

ml-commons resolves a connector's host by DNS when it sends a request and refuses it when *any* address
it resolves to is private, unless ``plugins.ml_commons.connector.private_ip_enabled`` is true
(opensearch-project/ml-commons ``MLValidatableAsyncHttpClient.validateIp`` / ``hasPrivateIpAddress``; the
error reads "Remote inference host name has private ip address: <host>"). The setting appeared in
ml-commons 2.15.0 (PR #2534); before it, ``MLHttpClientFactory.validateIp`` refused private addresses
with no way to allow them. What counts as private is ml-commons' rule, not Python's ``is_private``:

- IPv4 ``10/8``, ``172.16/12``, ``192.168/16``, ``169.254/16``, loopback ``127/8`` and ``0.0.0.0``;
- IPv6 loopback ``::1``, the unspecified ``::`` and site-local ``fec0::/10`` (Java's ``isSiteLocalAddress``;
  unique-local ``fc00::/7`` is *not* private there).

The installer resolves the host itself; a name it cannot resolve (a cluster-internal name such as
``rerank.search.svc.cluster.local`` seen from a laptop) is judged by its shape, and the install's final
probe checks the answer from the cluster's point of view.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from lychee_rerank.plugins._common import rerank_endpoint_url

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; raises ``OSError`` when the name does not resolve."""

PRIVATE_IP_MINIMUM_VERSION = (2, 15)
"""The first OpenSearch (ml-commons) with ``plugins.ml_commons.connector.private_ip_enabled``."""

PRIVATE_IP_REFUSAL = "has private ip address"
"""What ml-commons' refusal of a private host says (``Remote inference host name has private ip address``)."""

# Names that only resolve inside a private network: Kubernetes services, mDNS, common internal zones.
_INTERNAL_SUFFIXES = (".local", ".localdomain", ".internal", ".svc", ".cluster.local", ".lan", ".home.arpa")

_PRIVATE_V4 = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
)
_SITE_LOCAL_V6 = ipaddress.ip_network("fec0::/10")


def is_private_address(address: str) -> bool:
    """ml-commons' ``hasPrivateIpAddress`` for one address.

    Example:
        >>> [is_private_address(a) for a in ("10.1.2.3", "127.0.0.1", "8.8.8.8", "fd00::1", "::1")]
        [True, True, False, False, True]
    """
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # Java hands these back as Inet4Address
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_loopback or ip.is_unspecified or any(ip in net for net in _PRIVATE_V4)
    return ip.is_loopback or ip.is_unspecified or ip in _SITE_LOCAL_V6


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to here, as ``InetAddress.getAllByName`` would list them."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class HostCheck:
    """What the installer found out about the service's host.

    Attributes:
        host: The host of ``--rerank-url``.
        addresses: What it resolved to here (empty when it did not resolve).
        private: Whether ml-commons would count it private.
        how: How that was decided, for messages: ``"an IP address"``, ``"resolves to ..."`` or ``"by its name"``.
    """

    host: str
    addresses: tuple[str, ...]
    private: bool
    how: str

    def describe(self) -> str:
        """``rerank resolves to 10.0.0.7 (private)``, for messages."""
        kind = "private or loopback" if self.private else "public"
        return f"{self.host} {self.how} ({kind} for ml-commons)"


def check_host(rerank_url: str, resolver: Resolver | None = None) -> HostCheck:
    """Judges the service's host as ml-commons will: an IP literal exactly, a name by what it resolves to.

    A name that does not resolve here counts as private when it is ``localhost``, has a single label
    (``rerank`` in docker compose) or ends in an internal suffix (``.svc``, ``.cluster.local``,
    ``.internal``, ``.local``...), and as public otherwise.

    Example:
        >>> check_host("http://10.0.0.5:8000").private
        True
        >>> check_host("http://rerank.search.svc.cluster.local:8000", lambda host, port: []).how
        'does not resolve here; judged by its name'
    """
    parts = urlsplit(rerank_endpoint_url(rerank_url))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    else:
        return HostCheck(host, (host,), is_private_address(host), "is an IP address")
    try:
        addresses = tuple(sorted(set((resolver or resolve)(host, port))))
    except OSError:
        addresses = ()
    if addresses:
        private = [address for address in addresses if is_private_address(address)]
        return HostCheck(host, addresses, bool(private), f"resolves to {', '.join(private or addresses)}")
    lowered = host.lower().rstrip(".")
    by_name = lowered == "localhost" or "." not in lowered or lowered.endswith(_INTERNAL_SUFFIXES)
    return HostCheck(host, (), by_name, "does not resolve here; judged by its name")
