"""Checking a Ray cluster address before a driver joins it, so that a typo fails in seconds.

`ray.init(address=...)` at an address where no cluster runs retries for minutes before it gives
up. `check_address` answers first, within `PROBE_TIMEOUT_S`: it parses `host:port` or
`ray://host:port` (Ray Client), opens a TCP connection to that port and greets it the way a
gRPC client does (the HTTP/2 connection preface). A Ray GCS, and a Ray Client server, are gRPC
servers: they answer with an HTTP/2 SETTINGS frame before any authentication. Anything else
(nothing listening, no answer, a web server such as the dashboard on 8265) raises
`ClusterAddressError`, one line naming the address and what was tried.

`auto` and `local` are Ray's own keywords (find or start a local instance), passed on unchecked.
Imports only the standard library (the `msc` command runs it before it loads Ray).
"""
from __future__ import annotations

import socket
import threading
import time

PROBE_TIMEOUT_S = 5.0
CLIENT_SCHEME = "ray://"
RAY_KEYWORDS = ("auto", "local")
HINT = "start one with make cluster-up or check --address / $RAY_ADDRESS"
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, stream 0
SETTINGS_TYPE = 0x04


class ClusterAddressError(ConnectionError):
    """A Ray cluster address that is malformed, or where no Ray cluster answers."""


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `host:port`, `[v6-host]:port` or `ray://host:port`.

    Raises ClusterAddressError naming the address when it has no host, no port or a port that
    is not a number in 1..65535.
    """
    text = address.strip()
    rest = text[len(CLIENT_SCHEME):] if text.startswith(CLIENT_SCHEME) else text
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    problem = None
    if not sep or not host or "/" in rest:
        problem = "expected host:port or ray://host:port, e.g. 127.0.0.2:6379"
    elif not port.isdigit() or not 1 <= int(port) <= 65535:
        problem = f"port {port!r} is not a number in 1..65535"
    if problem:
        raise ClusterAddressError(f"bad Ray cluster address {address!r} ({problem}); check "
                                  "--address / $RAY_ADDRESS")
    return host, int(port)


def _resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """getaddrinfo of `host` for TCP, given at most `timeout` s (it has no timeout of its own).

    Raises OSError (socket.gaierror) when the name does not resolve, TimeoutError when the
    lookup takes longer.
    """
    found: dict[str, object] = {}

    def lookup() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            found["error"] = err

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    if "addresses" not in found:
        raise TimeoutError(f"looking up {host} took over {timeout:g} s")
    return found["addresses"]  # type: ignore[return-value]


def _greet(sock: socket.socket, deadline: float) -> str | None:
    """Send the HTTP/2 preface on a connected socket; None when a SETTINGS frame comes back,
    else what came back instead (in words)."""
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    sock.sendall(HTTP2_PREFACE + EMPTY_SETTINGS_FRAME)
    reply = b""
    try:
        while len(reply) < 9:
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
    except TimeoutError:
        return "the port accepted a TCP connection but sent no gRPC reply in time"
    except OSError as err:
        return f"the port accepted a TCP connection, then: {err.strerror or err}"
    if len(reply) >= 9 and reply[3] == SETTINGS_TYPE:
        return None
    if not reply:
        return "the port accepted a TCP connection and closed it without a gRPC reply"
    first = reply.decode("ascii", errors="replace").strip().splitlines()[0][:40]
    return f"the port answers, but not as a Ray GCS (gRPC) does: {first!r}"


def _probe(host: str, port: int, timeout: float, what: str) -> str | None:
    """None when a gRPC server answers at host:port within `timeout` s, else why not."""
    deadline = time.monotonic() + timeout
    try:
        addresses = _resolve(host, port, timeout)
    except TimeoutError:
        return f"looking up the host name {host!r} timed out after {timeout:g} s"
    except OSError as err:
        return f"the host name {host!r} does not resolve: {err.strerror or err}"
    reasons = []
    for family, kind, proto, _, target in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                sock.connect(target)
            except TimeoutError:
                reasons.append(f"TCP connect to the {what} timed out after {timeout:g} s")
                continue
            except ConnectionRefusedError:
                reasons.append(f"TCP connect to the {what} was refused: nothing listens there")
                continue
            except OSError as err:
                reasons.append(f"TCP connect to the {what} failed: {err.strerror or err}")
                continue
            reason = _greet(sock, deadline)
            if reason is None:
                return None
            reasons.append(reason)
    return "; ".join(dict.fromkeys(reasons)) or f"no address found for {host!r}"


def check_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Return when a Ray GCS (or, for ray://, a Ray Client server) answers at `address`.

    Ray's keywords `auto` and `local` pass unchecked. Raises ClusterAddressError, one line:
    a malformed address, or which address did not answer and what was tried.
    """
    if address.strip() in RAY_KEYWORDS:
        return
    host, port = split_address(address)
    what = "Ray Client port" if address.strip().startswith(CLIENT_SCHEME) else "GCS port"
    reason = _probe(host, port, timeout, what)
    if reason is not None:
        raise ClusterAddressError(f"no Ray cluster answers at {address.strip()} ({reason}); {HINT}")
