"""The ``gc_freeze`` setting: validated like every flag, and ``gc.freeze()`` done
twice per process on the recorder thread (at its first tick, then after the
warm-up), never more, afresh in a forked child.

Freezing is process-wide, so the freezes run in a subprocess of their own, a
real Leza with its real recorder thread in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from leza_middleware import Leza, LezaConfigError

SCRIPT = textwrap.dedent(
    """
    import gc, json, os, sys, time
    from leza_middleware import Leza, gcfreeze
    from leza_middleware.request_path import raw_access

    gcfreeze.WARMUP = 0.3
    enabled = sys.argv[1] != "off"
    expected = sys.argv[1] == "on"  # how long to wait for a freeze: one is expected
    if sys.argv[1] == "gc-disabled":
        gc.disable()
    spill = sys.argv[2]

    def build(name):
        return Leza(storage="memory://", geoip_db=False, spill_dir=os.path.join(spill, name),
                    flush_interval=0.02, secret_key="tests-secret-key-0123456789",
                    gc_freeze=enabled)

    def settle(leza, want, seconds=5.0):
        # A request's record: the recorder thread starts, and ticks every flush_interval.
        leza.recorder.offer(raw_access(ts=time.time(), request_id="gc-freeze-test"))
        leza.flush(5)
        deadline = time.monotonic() + seconds
        while gcfreeze.frozen() < want and time.monotonic() < deadline:
            time.sleep(0.01)
        return gcfreeze.frozen()

    out = {"before": [gcfreeze.frozen(), gc.get_freeze_count()]}
    first, second = build("a"), build("b")  # two instances: still one process's count
    out["first_tick"] = settle(first, 1, 5.0 if expected else 0.2)
    out["frozen_objects"] = gc.get_freeze_count()
    out["after_warmup"] = settle(second, 2, 1.5 if expected else 0.5)
    time.sleep(1.0)  # several warm-ups more: no third freeze
    out["later"] = [gcfreeze.frozen(), gc.get_freeze_count()]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        child = {"inherited": [gcfreeze.frozen(), gc.get_freeze_count()]}
        child["first_tick"] = settle(first, 1, 5.0 if expected else 0.2)
        child["after_warmup"] = settle(first, 2, 1.5 if expected else 0.5)
        child["count"] = gc.get_freeze_count()
        os.write(write, json.dumps(child).encode())
        first.shutdown(2)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out["child"] = json.loads(f.read())
    os.waitpid(pid, 0)
    first.shutdown(2)
    second.shutdown(2)
    print(json.dumps(out))
    """
)


def run(setting: str, tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEZA_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, setting, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_freezes_twice_per_process_and_afresh_after_fork(tmp_path: Path) -> None:
    out = run("on", tmp_path)
    assert out["before"] == [0, 0]  # nothing at import or construction
    assert out["first_tick"] == 1  # the recorder's first tick
    assert out["frozen_objects"] > 10_000  # the interpreter's and leza's start-up
    assert out["after_warmup"] == 2  # once more after the warm-up...
    assert out["later"][0] == 2  # ...and never again
    child = out["child"]
    # The parent's frozen objects stay frozen in the child (minus those freed since:
    # reference counting still frees frozen objects), and its own count starts at 0.
    assert child["inherited"][0] == 0
    assert child["inherited"][1] > 10_000
    assert child["first_tick"] == 1
    assert child["after_warmup"] == 2  # its own start-up, twice
    assert child["count"] > child["inherited"][1] // 2


@pytest.mark.parametrize("setting", ["off", "gc-disabled"])
def test_off_or_collector_disabled_never_freezes(setting: str, tmp_path: Path) -> None:
    """gc_freeze off; or on while the app has disabled the collector (it manages it)."""
    out = run(setting, tmp_path)
    assert out["first_tick"] == out["after_warmup"] == 0
    assert out["later"] == [0, 0]
    assert out["child"]["count"] == 0
    assert out["child"]["after_warmup"] == 0


@pytest.fixture
def quiet(tmp_path: Path) -> dict[str, Any]:
    return {
        "storage": "memory://",
        "geoip_db": False,
        "spill_dir": str(tmp_path / "spill"),
        "secret_key": "test-secret-0123456789abcdef",
    }


def test_setting_default_keyword_and_environment(
    quiet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Leza(**quiet).settings.gc_freeze is True
    assert Leza(**quiet, gc_freeze=False).settings.gc_freeze is False
    monkeypatch.setenv("LEZA_GC_FREEZE", "off")
    assert Leza(**quiet).settings.gc_freeze is False
    assert Leza(**quiet, gc_freeze="on").settings.gc_freeze is True  # keyword wins


@pytest.mark.parametrize("bad", ["maybe", "", "2", 1, 0.0, None.__class__])
def test_bad_values_fail_at_configuration(quiet: dict[str, Any], bad: Any) -> None:
    with pytest.raises(LezaConfigError, match=r"gc_freeze must be true or false"):
        Leza(**quiet, gc_freeze=bad)


def test_bad_environment_value_names_the_variable(
    quiet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEZA_GC_FREEZE", "sometimes")
    with pytest.raises(LezaConfigError, match=r"gc_freeze \(from \$LEZA_GC_FREEZE\) must be"):
        Leza(**quiet)
