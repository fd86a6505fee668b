"""Request ids: 32 hex characters, never repeated within a process whether asked
for as text (WSGI, Django) or bytes (ASGI), and a fresh prefix after ``fork``."""

from __future__ import annotations

import os
import re

import pytest

from leza_middleware import ids
from leza_middleware.core.flavour import Flavour

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_text_and_bytes_ids_share_one_counter_and_one_prefix() -> None:
    made = []
    for _ in range(50):
        made.append(ids.new_request_id())
        made.append(ids.new_request_id_bytes().decode("ascii"))
    assert all(HEX32.fullmatch(rid) for rid in made)
    assert len(set(made)) == len(made)  # no id made twice, across both kinds
    assert len({rid[:20] for rid in made}) == 1  # one process prefix
    counters = [int(rid[20:], 16) for rid in made]
    assert counters == list(range(counters[0], counters[0] + len(made)))


def test_the_request_core_draws_from_the_same_sources() -> None:
    """The core calls ``next(flavour.request_ids[0])``: the same ids as the functions."""
    asgi, cgi = Flavour(True, "x-request-id", ()), Flavour(False, "x-request-id", ())
    a = next(asgi.request_ids[0])
    b = next(cgi.request_ids[0])
    c = ids.new_request_id_bytes()
    assert isinstance(a, bytes)
    assert isinstance(b, str)
    assert int(b[20:], 16) == int(a[20:], 16) + 1
    assert int(c[20:], 16) == int(a[20:], 16) + 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_ids_of_its_own() -> None:
    parent = ids.new_request_id_bytes()
    asgi = Flavour(True, "x-request-id", ())  # built before the fork, as in a preloaded app
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave at once
        try:
            os.write(write, next(asgi.request_ids[0]) + b" " + ids.new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 2
    assert all(HEX32.fullmatch(rid.decode()) for rid in child)
    assert child[0][:20] == child[1][:20] != parent[:20]  # a new prefix in the child
    assert ids.new_request_id_bytes()[:20] == parent[:20]  # the parent's is unchanged
