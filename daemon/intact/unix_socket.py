"""The app-facing Unix socket file: created with the configured mode, never stolen.

A socket file left behind by a crashed daemon is replaced; one that still has a listener
makes start-up fail, so two daemons can never fight over the same path. The default path's
directory must be intact's own: a directory other users can write to would let any of them
take the path first (or swap the socket), so intact refuses to start there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat


class SocketInUseError(RuntimeError):
    """Another process is listening on the socket path."""


class UnsafeSocketDirError(RuntimeError):
    """The default socket's directory is not private to intact's user."""


def prepare_default_socket_dir(directory: str, *, euid: int | None = None) -> None:
    """Create the default socket's directory if missing (0700; 0755 for root's /run/intact,
    so apps of other users can reach the 0660 socket), then refuse it unless it is a real
    directory owned by intact's user that nobody else can write to."""
    uid = os.geteuid() if euid is None else euid
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeSocketDirError(
            f"cannot create the socket directory {directory}: {exc.strerror}; "
            "set server.socket (or --socket) to a path in a directory intact may use"
        ) from None
    else:
        os.chmod(directory, 0o755 if uid == 0 else 0o700)
    st = os.lstat(directory)
    fix = "remove it or set server.socket (or --socket)"
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeSocketDirError(f"{directory} is not a directory (a symlink?); {fix}")
    if st.st_uid != uid:
        raise UnsafeSocketDirError(
            f"{directory} is owned by uid {st.st_uid}, not intact's uid {uid}: another user "
            f"could replace the socket; {fix}"
        )
    if st.st_mode & 0o022:
        raise UnsafeSocketDirError(
            f"{directory} has mode {stat.S_IMODE(st.st_mode):04o}: other users can write "
            f"to it and replace the socket; chmod go-w it, {fix}"
        )


def world_writable_dir(path: str) -> bool:
    """True when the socket's directory lets every user create files (e.g. /tmp)."""
    try:
        return bool(os.stat(os.path.dirname(path) or ".").st_mode & stat.S_IWOTH)
    except OSError:
        return False


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
