"""Who may use intact, as which app, and how many streams each app may have at once.

A peer is admitted by its kernel-reported uid or gid (``server.allowed_uids`` /
``allowed_gids``; both empty admits every peer the socket's file mode lets in). Its app is
the ``[[apps]]`` entry listing its uid, or the one named by an ``intact-app`` header when
``server.trust_app_header`` is set; anything else is the app 'other', so the ``app`` label
only ever takes configured names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from intact.config import OTHER_APP, AppConfig, ServerConfig
from intact.peer import Peer
from intact.telemetry.api import RefusalReason

APP_HEADER: Final = "intact-app"

OnRefused = Callable[[str, RefusalReason], None]


class AppAccess:
    """The access list, the uid -> app map and the per-app stream counts."""

    def __init__(
        self,
        server: ServerConfig,
        apps: Sequence[AppConfig],
        *,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._active: Counter[str] = Counter()
        self._refused: dict[str, Counter[RefusalReason]] = {}
        self._on_refused = on_refused
        self.reconfigure(server, apps)

    def reconfigure(self, server: ServerConfig, apps: Sequence[AppConfig]) -> None:
        """Apply (new) access settings; streams in flight and the counts are kept."""
        self._allowed_uids = frozenset(server.allowed_uids)
        self._allowed_gids = frozenset(server.allowed_gids)
        self._open_to_all = not (self._allowed_uids or self._allowed_gids)
        self._trust_header = server.trust_app_header
        self._app_of_uid = {uid: app.name for app in apps for uid in app.uids}
        self._limit = {app.name: app.max_concurrent_streams for app in apps}
        self.names: tuple[str, ...] = (*(app.name for app in apps), OTHER_APP)
        for name in self.names:
            self._refused.setdefault(name, Counter())

    def admits(self, peer: Peer | None) -> bool:
        if self._open_to_all:
            return True
        if peer is None:  # no credentials: an access list cannot be checked
            return False
        return peer.uid in self._allowed_uids or peer.gid in self._allowed_gids

    def app_for(self, peer: Peer | None, headers: Mapping[str, str]) -> str:
        """The app a request is served as: always a configured name or 'other'."""
        if self._trust_header:
            claimed = headers.get(APP_HEADER)
            if claimed is not None and claimed in self._limit:
                return claimed
        if peer is not None:
            return self._app_of_uid.get(peer.uid, OTHER_APP)
        return OTHER_APP

    def open_stream(self, app: str) -> bool:
        """Take one of the app's stream slots; False when it has none left."""
        limit = self._limit.get(app, 0)
        if limit and self._active[app] >= limit:
            return False
        self._active[app] += 1
        return True

    def close_stream(self, app: str) -> None:
        self._active[app] -= 1

    def active(self, app: str) -> int:
        return self._active[app]

    def refuse(self, app: str, reason: RefusalReason) -> None:
        """Count a refusal (and report it to telemetry)."""
        self._refused.setdefault(app, Counter())[reason] += 1
        if self._on_refused is not None:
            self._on_refused(app, reason)

    def snapshot(self) -> list[dict[str, object]]:
        """Plain data for /debug/state: per app, streams now, the limit and refusals."""
        return [
            {
                "name": name,
                "uids": sorted(uid for uid, app in self._app_of_uid.items() if app == name),
                "active_streams": self._active[name],
                "max_concurrent_streams": self._limit.get(name, 0),
                "refused": {r.value: self._refused[name][r] for r in RefusalReason},
            }
            for name in self.names
        ]


__all__ = ["APP_HEADER", "AppAccess", "OnRefused", "RefusalReason"]
