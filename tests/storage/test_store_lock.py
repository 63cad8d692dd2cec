"""The store's lock of a sweep (``ablations.store_lock``) against moto's S3 server on
loopback: claims naming their holder, refusal of a live one, takeover of a stale one,
the heartbeat, and exactly one winner among writers started together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ablations import lock, store_lock
from ablations.storage import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plant(store, name, **info):
    """A claim of another writer, as its own process would have written it."""
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
              "heartbeat": now, "command": "python sweep.py --name x", "token": "t" * 32,
              "held": True, **info}
    store.write(f"{name}/{store_lock.PREFIX}/{record['token']}.json", json.dumps(record).encode())
    return record


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claim_names_the_holder_and_release_deletes_it(s3):
    store = Store(f"s3://{s3}/pre")
    held = store_lock.acquire(store, "n", "python sweep.py --name n")
    try:
        (key, info), = store_lock.claims(store, "n").items()
        assert key.startswith(f"n/{store_lock.PREFIX}/")
        assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
        assert info["command"] == "python sweep.py --name n" and info["started"] > 0
        assert held.held
    finally:
        held.release()
    assert store_lock.claims(store, "n") == {} and not held.held
    held.release()  # idempotent


def test_a_live_claim_elsewhere_is_refused_in_one_line(s3):
    store = Store(f"s3://{s3}/pre")
    plant(store, "n", host="node-7", pid=4242)
    with pytest.raises(lock.LockHeld) as e:
        store_lock.acquire(store, "n", "python sweep.py --resume n", "--resume")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"s3://{s3}/pre/n is in use by another writer: pid 4242 on host node-7" in msg
    assert "--resume cannot write" in msg
    assert len(store_lock.claims(store, "n")) == 1  # nothing of ours left behind


@pytest.mark.parametrize("who, why", [
    # the heartbeat's age, not its time: set when the test runs, not when it is collected
    ({"host": "node-7", "pid": 4242, "heartbeat_age": 600}, "no heartbeat for 10 min"),
    ({"pid": None}, "its process is gone"),  # this host, a pid that has ended (set below)
], ids=["old-heartbeat-elsewhere", "dead-pid-here"])
def test_a_stale_claim_is_taken_over_with_a_warning(s3, capsys, who, why):
    store = Store(f"s3://{s3}/pre")
    if who.get("pid") is None:
        who = {**who, "pid": dead_pid()}
    if "heartbeat_age" in who:
        who = {k: v for k, v in who.items() if k != "heartbeat_age"} | {
            "heartbeat": time.time() - who["heartbeat_age"]}
    stale = plant(store, "n", **who)
    held = store_lock.acquire(store, "n", "python sweep.py --resume n")
    try:
        err = capsys.readouterr().err
        assert f"warning: taking over the lock of s3://{s3}/pre/n from pid {stale['pid']}" in err
        assert why in err and err.count("\n") == 1
        (info,) = store_lock.claims(store, "n").values()
        assert info["token"] == held.info["token"]
    finally:
        held.release()


def test_the_heartbeat_refreshes_the_claim_and_notices_a_takeover(s3, capsys):
    store = Store(f"s3://{s3}/pre")
    held = store_lock.acquire(store, "n", "cmd", heartbeat_s=0.2)
    try:
        first = held.info["heartbeat"]
        deadline = time.time() + 10
        while time.time() < deadline:
            (info,) = store_lock.claims(store, "n").values()
            if info["heartbeat"] > first:
                break
            time.sleep(0.1)
        assert info["heartbeat"] > first
        plant(store, "n", host="node-7", pid=4242)  # a writer that judged ours stale
        deadline = time.time() + 10
        while held.beating and time.time() < deadline:
            time.sleep(0.1)
        assert not held.beating
        assert "was taken over by pid 4242 on host node-7" in capsys.readouterr().err
    finally:
        held.release()


HOLDER = textwrap.dedent("""
    import sys, time
    from ablations import lock, store_lock
    from ablations.storage import Store
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
    try:
        held = store_lock.acquire(Store(sys.argv[1]), "n", "holder")
    except lock.LockHeld as e:
        print("refused:", e, flush=True)
        sys.exit(2)
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    held.release()
""")


def test_writers_started_together_exactly_one_holds(s3, s3_server, tmp_path):
    from .conftest import S3_ENV, s3_env
    env = {k: v for k, v in os.environ.items() if k not in S3_ENV}
    env.update(s3_env(s3_server, tmp_path), PYTHONPATH=ROOT)
    at = time.time() + 4  # after every interpreter has imported pyarrow
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, f"s3://{s3}/pre", str(at), "4"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    if codes != [0, 2, 2]:  # each writer's whole output: a traceback is not cut short
        pytest.fail("\n".join(f"writer exit {p.returncode}\nstdout: {out}\nstderr: {err}"
                               for p, (out, err) in zip(procs, outs)), pytrace=False)
    winner = procs[[p.returncode for p in procs].index(0)].pid
    for p, (out, err) in zip(procs, outs):
        if p.returncode == 2:
            assert f"is in use by another writer: pid {winner} on host" in out, (out, err)
    assert store_lock.claims(Store(f"s3://{s3}/pre"), "n") == {}  # released, none left


class Flaky:
    """A store whose listing fails ``fails`` times (a request the store dropped), then
    works; ``fails=None``: it never works."""

    def __init__(self, store, fails):
        self.store, self.fails, self.uri = store, fails, store.uri

    def list(self, prefix=""):
        if self.fails is None or self.fails > 0:
            self.fails = None if self.fails is None else self.fails - 1
            raise OSError("AWS Error NETWORK_CONNECTION during ListObjectsV2 operation: "
                          "curlCode: 7, Couldn't connect to server")
        return self.store.list(prefix)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_request_the_store_drops_is_tried_again(s3):
    store = Store(f"s3://{s3}/pre")
    held = store_lock.acquire(Flaky(store, 2), "n", "python sweep.py --name n")
    try:
        assert held.held and len(store_lock.claims(store, "n")) == 1
    finally:
        held.release()


def test_a_store_that_stays_down_is_one_line_after_the_wait(s3):
    store = Store(f"s3://{s3}/pre")
    t = time.monotonic()
    with pytest.raises(lock.SpecError) as e:
        store_lock.acquire(Flaky(store, None), "n", "python sweep.py --name n", wait_s=1.5)
    assert 1.5 <= time.monotonic() - t < 5
    assert str(e.value).startswith(f"the lock could not be taken: s3://{s3}/pre: cannot "
                                   "reach the store at ") and "\n" not in str(e.value)
    assert store_lock.claims(store, "n") == {}  # nothing left behind
