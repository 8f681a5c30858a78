"""Downloading an image or file a request names by http(s) URL, without becoming a proxy into
the server's own network (SSRF).

    policy = FetchPolicy(max_bytes=10 << 20, timeout_s=10, max_redirects=3, allow_private=False)
    got = fetch(url, policy, param="messages[0].content[1].image_url.url")   # blocking: run in a thread
    got.data, got.content_type

Only when the server runs with `--allow-image-urls` (IMAGEMINI_ALLOW_IMAGE_URLS=1). Rules:
- http and https only; no user:password@ in the URL;
- the host is resolved HERE and EVERY address it resolves to must be global unicast: loopback,
  private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254), shared, reserved,
  multicast, unspecified addresses, and IPv6 forms embedding one (IPv4-mapped, 6to4, Teredo,
  NAT64) are refused, unless `allow_private` (`--allow-private-urls`);
- the connection goes to the address that was checked (the name is not resolved a second
  time, so DNS rebinding cannot swap in another address); TLS still verifies the host name;
- redirects are followed by hand, at most `max_redirects`, each new URL checked the same way;
- the whole download has one deadline (`timeout_s`; DNS lookups are not covered) and one size
  cap (`max_bytes`, from Content-Length up front and while reading); no proxy is used.
Failures are 400 (`url_fetch_failed`, `url_not_allowed`, `url_timeout`) or 413 (`file_too_large`).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from .errors import APIError, bad_request

REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "imagemini (+https://github.com/imagemini)"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def system_resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_private: bool = False
    # Networks allowed although not global (tests; an operator's allow-list).
    allowed_networks: tuple[str, ...] = ()
    resolve: Callable[[str, int], list[str]] = field(default=system_resolve, compare=False)
    what: str = "file"  # for messages: "image" or "file"
    limit_name: str = "IMAGEMINI_MAX_FILE_BYTES"


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str  # the media type of the last response, lower case, without parameters
    url: str  # after redirects


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_allowed(ip: Address, policy: FetchPolicy) -> bool:
    if any(ip in ipaddress.ip_network(net) for net in policy.allowed_networks):
        return True
    if ip.is_unspecified or ip.is_multicast:
        return False
    if policy.allow_private:
        return True
    inner = embedded_ipv4(ip)
    if inner is not None and not address_allowed(inner, policy):
        return False
    return ip.is_global


def fetch(url: str, policy: FetchPolicy, param: str | None = None) -> Fetched:
    """GET `url` under `policy` (blocking). Raises APIError (400/413) on every failure."""
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(policy.max_redirects + 1):
        scheme, host, port, target = _check_url(url, param)
        addresses = _resolve_checked(host, port, policy, param)
        response, conn = _request(scheme, host, port, target, addresses, deadline, param)
        try:
            if response.status in REDIRECTS:
                location = response.getheader("location")
                if not location:
                    raise _failed(f"the URL answered HTTP {response.status} without a Location", param)
                url = urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise _failed(f"the URL answered HTTP {response.status} {response.reason}".rstrip(), param)
            data = _read_capped(response, conn, policy, deadline, param)
            content_type = (response.getheader("content-type") or "").split(";")[0].strip().lower()
            return Fetched(data, content_type, url)
        finally:
            conn.close()
    raise _failed(f"more than {policy.max_redirects} redirects (IMAGEMINI_URL_MAX_REDIRECTS)", param)


# --- steps -------------------------------------------------------------------------------------------
def _check_url(url: str, param: str | None) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad_request(f"{param}: invalid URL ({exc})", param=param, code="invalid_url") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise bad_request(f"{param}: only http and https URLs can be fetched (got '{scheme}:')", param=param, code="invalid_url")
    if parts.username is not None or parts.password is not None:
        raise bad_request(f"{param}: URLs with credentials are not allowed", param=param, code="invalid_url")
    host = parts.hostname
    if not host:
        raise bad_request(f"{param}: the URL has no host", param=param, code="invalid_url")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), target


def _resolve_checked(host: str, port: int, policy: FetchPolicy, param: str | None) -> list[str]:
    try:
        addresses = policy.resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise _failed(f"could not resolve host '{host}' ({type(exc).__name__})", param) from None
    if not addresses:
        raise _failed(f"could not resolve host '{host}'", param)
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone id
        if not address_allowed(ip, policy):
            raise APIError(
                400,
                f"{param}: host '{host}' resolves to {ip}, a loopback/private/link-local or otherwise non-public "
                "address; fetching it is not allowed (IMAGEMINI_ALLOW_PRIVATE_URLS)",
                param=param,
                code="url_not_allowed",
            )
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to a checked address, whatever the host name would resolve to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # verifies the name


def _request(scheme, host, port, target, addresses, deadline, param):
    last: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(param)
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = cls(host, port, address.split("%")[0], timeout=remaining)
        try:
            conn.request("GET", target, headers={
                "User-Agent": USER_AGENT, "Accept": "image/*, application/pdf, text/*;q=0.8, */*;q=0.1",
                "Accept-Encoding": "identity",
            })
            return conn.getresponse(), conn
        except TimeoutError:
            conn.close()
            raise _timeout(param) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            last = exc
    raise _failed(f"could not connect to '{host}' ({type(last).__name__})", param)


def _read_capped(response, conn, policy: FetchPolicy, deadline: float, param: str | None) -> bytes:
    declared = response.getheader("content-length")
    if declared and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise _too_large(policy, param)
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout(param)
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        try:
            piece = response.read1(min(65536, policy.max_bytes + 1 - len(data)))  # one recv: the deadline holds
        except TimeoutError:
            raise _timeout(param) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _failed(f"the download broke off ({type(exc).__name__})", param) from None
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > policy.max_bytes:
            raise _too_large(policy, param)


def _failed(message: str, param: str | None) -> APIError:
    return bad_request(f"{param}: could not fetch the URL: {message}", param=param, code="url_fetch_failed")


def _timeout(param: str | None) -> APIError:
    return bad_request(
        f"{param}: could not fetch the URL within the time limit (IMAGEMINI_URL_TIMEOUT_S)", param=param, code="url_timeout"
    )


def _too_large(policy: FetchPolicy, param: str | None) -> APIError:
    return APIError(
        413,
        f"{param}: the downloaded {policy.what} is larger than {policy.max_bytes} bytes ({policy.limit_name})",
        param=param,
        code=f"{policy.what}_too_large",
    )
