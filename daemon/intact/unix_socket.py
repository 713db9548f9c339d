"""The app-facing Unix socket file: created with the configured mode, never stolen.

A socket file left behind by a crashed daemon is replaced; one that still has a listener
makes start-up fail, so two daemons can never fight over the same path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat


class SocketInUseError(RuntimeError):
    """Another process is listening on the socket path."""


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    else:
        return True
    finally:
        probe.close()


def bind_unix_socket(path: str, mode: int, backlog: int = 512) -> socket.socket:
    """Bind and listen on ``path`` with permission bits ``mode``."""
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUseError(f"{path} exists and is not a socket; refusing to replace it")
        if _is_live(path):
            raise SocketInUseError(
                f"another process is already listening on {path}; stop it or pick another "
                "path with --socket"
            )
        os.unlink(path)  # stale: its daemon is gone
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a umask that leaves nothing wider than `mode` for the instant before chmod.
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def socket_inode(path: str) -> int:
    return os.stat(path).st_ino


def remove_socket_file(path: str, inode: int | None = None) -> None:
    """Remove our socket file at shutdown, unless another daemon has replaced it since."""
    with contextlib.suppress(OSError):
        if inode is not None and os.stat(path).st_ino != inode:
            return
        os.unlink(path)
