"""Liveness and readiness, as JSON for load balancers and orchestrators.

Served without authorisation under the admin view's mount
(``/leza/health/live``, ``/leza/health/ready``) and answered from memory, so
a probe every second costs nothing and never touches storage.

* live: the process answers; 200 always (with the recorder's state).
* ready: 503 while any registered check is DOWN — the app's dependencies are
  not there — else 200. The library's own storage being down does *not* make
  the app unready: events are spilled and replayed, the app keeps serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..recorder import Recorder
    from .monitor import Monitor

__all__ = ["liveness", "readiness"]


def _recorder(recorder: Recorder) -> dict[str, Any]:
    stats = recorder.stats()
    return {
        "running": recorder.running,
        "storage": "down" if stats.get("storage_down") else "up",
        "pending": stats["pending"],
        "dropped": stats["dropped"],
    }


def liveness(app_name: str, recorder: Recorder) -> tuple[int, dict[str, Any]]:
    return 200, {"status": "ok", "app": app_name, "recorder": _recorder(recorder)}


def readiness(app_name: str, recorder: Recorder, monitor: Monitor) -> tuple[int, dict[str, Any]]:
    checks: dict[str, str] = {}
    for check in monitor.checks():
        local = monitor.local_state(check.name)
        checks[check.name] = "unknown" if local is None else local[0]
    down = sorted(name for name, state in checks.items() if state == "down")
    body: dict[str, Any] = {
        "status": "not_ready" if down else "ready",
        "app": app_name,
        "checks": checks,
        "down": down,
        "recorder": _recorder(recorder),
    }
    return (503 if down else 200), body
