"""Who is on the other end of an app connection: the peer process's pid, uid and gid.

The kernel records them when the peer connects to the Unix socket (``SO_PEERCRED``), so
they cannot be forged by what the peer sends. Linux only; elsewhere a peer has no known
credentials (access lists then admit nobody, and every peer is the app 'other').
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final, Protocol

# struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED: Final = struct.Struct("3i")
_SO_PEERCRED: Final[int | None] = getattr(socket, "SO_PEERCRED", None)


class _Socket(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Peer:
    """Credentials of a connected peer, as the kernel saw them at connect time.

    ``pid`` is 0 when the peer is in a pid namespace intact cannot see (e.g. another
    container of the same pod without a shared process namespace).
    """

    pid: int
    uid: int
    gid: int

    @property
    def key(self) -> str:
        """What per-peer limits count by: the process, or its uid when the pid is hidden."""
        return f"pid:{self.pid}" if self.pid > 0 else f"uid:{self.uid}"


UNKNOWN_PEER_KEY: Final = "unknown"


def peer_credentials(sock: _Socket | None) -> Peer | None:
    """The peer of a connected Unix socket, or None where the platform cannot tell."""
    if sock is None or _SO_PEERCRED is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


__all__ = ["UNKNOWN_PEER_KEY", "Peer", "peer_credentials"]
