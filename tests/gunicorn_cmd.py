"""The gunicorn command line the real-server tests start (test_multiworker,
test_revocation_startup, test_relogin, test_scaling_acceptance): one place for
the socket handed over as ``fd://`` and the options every gunicorn needs here."""

from __future__ import annotations

import importlib
import sys

__all__ = ["gunicorn_command", "gunicorn_supports"]


def gunicorn_supports(option: str) -> bool:
    config = importlib.import_module("gunicorn.config")
    return any(option in (s.cli or ()) for s in config.KNOWN_SETTINGS)


def gunicorn_command(
    app: str, fd: int, *, workers: int, worker_class: str, graceful_timeout: float = 20,
    log_level: str = "warning", preload: bool = False,
) -> list[str]:  # fmt: skip
    """gunicorn serving ``app`` on the listening socket ``fd`` (a backlog the test
    bound, so no request is lost while workers boot)."""
    cmd = [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"fd://{fd}", "--workers", str(workers), "--worker-class", worker_class,
        "--graceful-timeout", str(graceful_timeout), "--log-level", log_level,
    ]  # fmt: skip
    if preload:
        cmd.append("--preload")
    if gunicorn_supports("--no-control-socket"):
        cmd.append("--no-control-socket")  # gunicorn >= 25 would open ~/.gunicorn/*.ctl
    return cmd
