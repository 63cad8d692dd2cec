"""The results folder's lock (``ablations.lock``): created atomically, refused while
its holder lives, taken over when it is gone, released on every exit path."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ablations import lock


@pytest.fixture
def other_process():
    """A live process that is not this one (the holder of a foreign lock)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def write_lock(run_dir, **info):
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    rec = {"host": socket.gethostname(), "pid": 1, "started": now - 60, "heartbeat": now,
           "command": "python sweep.py --name other", "token": "t", **info}
    (run_dir / lock.NAME).write_text(json.dumps(rec))
    return rec


def test_create_names_the_holder_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "out" / "name"
    held = lock.acquire(run_dir, "python sweep.py --name name")
    try:
        info = json.loads((run_dir / lock.NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "python sweep.py --name name"
        assert abs(info["started"] - time.time()) < 60 and info["heartbeat"] >= info["started"]
        assert not [p for p in run_dir.iterdir() if p.name != lock.NAME]  # no temp file left
    finally:
        held.release()
    assert not (run_dir / lock.NAME).exists()
    assert not (tmp_path / "out").exists()  # folders the lock alone created are removed
    held.release()  # idempotent


def test_a_live_holder_is_refused_with_one_line_naming_it(tmp_path, other_process):
    run_dir = tmp_path / "r"
    write_lock(run_dir, pid=other_process.pid)
    before = (run_dir / lock.NAME).read_text()
    for attempt in (lambda: lock.check(run_dir), lambda: lock.acquire(run_dir, "me")):
        with pytest.raises(lock.LockHeld) as e:
            attempt()
        msg = str(e.value)
        assert "\n" not in msg
        assert f"pid {other_process.pid} on host {socket.gethostname()} since " in msg
        assert "(python sweep.py --name other)" in msg and str(run_dir) in msg
    assert (run_dir / lock.NAME).read_text() == before  # untouched
    assert sorted(p.name for p in run_dir.iterdir()) == [lock.NAME]


def test_a_dead_pid_on_this_host_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "r"
    write_lock(run_dir, pid=dead.pid)
    lock.check(run_dir)  # a dead holder is no holder
    held = lock.acquire(run_dir, "me")
    try:
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "warning: taking over the lock" in err
        assert f"pid {dead.pid}" in err and "its process is gone" in err
        assert json.loads((run_dir / lock.NAME).read_text())["pid"] == os.getpid()
    finally:
        held.release()
    assert not (run_dir / lock.NAME).exists() and run_dir.is_dir()  # it existed before


def test_a_reused_pid_is_not_the_holder(tmp_path, other_process):
    run_dir = tmp_path / "r"
    write_lock(run_dir, pid=other_process.pid, pid_start="1")  # that pid started elsewhen
    lock.acquire(run_dir, "me").release()


def test_another_hosts_lock_is_stale_only_without_a_heartbeat(tmp_path, capsys):
    run_dir = tmp_path / "r"
    write_lock(run_dir, host="elsewhere", pid=os.getpid() + 1)  # fresh heartbeat: alive
    with pytest.raises(lock.LockHeld, match="on host elsewhere"):
        lock.acquire(run_dir, "me")
    write_lock(run_dir, host="elsewhere", heartbeat=time.time() - lock.STALE_S - 60)
    held = lock.acquire(run_dir, "me")
    held.release()
    assert "no heartbeat for 6 min" in capsys.readouterr().err


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
    run_dir = tmp_path / "r"
    held = lock.acquire(run_dir, "me", heartbeat_s=0.05)
    try:
        first = json.loads((run_dir / lock.NAME).read_text())["heartbeat"]
        deadline = time.time() + 10
        while json.loads((run_dir / lock.NAME).read_text())["heartbeat"] == first:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.05)
    finally:
        held.release()
    assert not (run_dir / lock.NAME).exists()


def test_released_when_the_holder_raises_or_exits(tmp_path):
    run_dir = tmp_path / "r"
    with pytest.raises(RuntimeError):
        held = lock.acquire(run_dir, "me")
        try:
            raise RuntimeError("boom")
        finally:
            held.release()
    assert not (run_dir / lock.NAME).exists()
    # a process that ends with an uncaught exception (no explicit release): atexit
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from ablations import lock; "
            "lock.acquire(sys.argv[1], 'child'); raise SystemExit(3)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code, str(run_dir), root], timeout=60)
    assert p.returncode == 3 and not (run_dir / lock.NAME).exists()


def test_a_takeover_does_not_release_the_new_holders_lock(tmp_path, other_process):
    """A holder judged gone (heartbeat stale) that comes back must not remove the lock
    of the one that took over."""
    run_dir = tmp_path / "r"
    mine = lock.acquire(run_dir, "me")
    rec = write_lock(run_dir, pid=other_process.pid)  # someone else holds it now
    mine.release()
    assert json.loads((run_dir / lock.NAME).read_text())["token"] == rec["token"]


def test_this_process_takes_its_own_lock_again(tmp_path):
    run_dir = tmp_path / "r"
    first = lock.acquire(run_dir, "sweep")
    lock.check(run_dir)
    second = lock.acquire(run_dir, "resume")
    assert not first.held and second.held
    second.release()
    assert not (run_dir / lock.NAME).exists()


def test_an_unwritable_place_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")  # a folder cannot be made under a file (even as root)
    with pytest.raises(lock.SpecError, match="cannot lock .* for writing") as e:
        lock.acquire(tmp_path / "file" / "name", "me")
    assert "\n" not in str(e.value)


def test_measure_is_refused_while_a_sweep_writes_and_locks_while_it_writes(
        tmp_path, other_process, monkeypatch, capsys):
    from ablations import measure
    run_dir = tmp_path / "r"
    write_lock(run_dir, pid=other_process.pid)
    assert measure.main([str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pid {other_process.pid}" in err[0] and "measuring" in err[0]
    (run_dir / lock.NAME).unlink()
    # past its checks, the measuring itself runs with the folder locked, released after
    seen = []
    monkeypatch.setattr(measure, "prepare", lambda args: measure.Job(
        run_dir, None, ("signal",), [], []))
    monkeypatch.setattr(measure, "measure", lambda job, args, argv, started: seen.append(
        json.loads((run_dir / lock.NAME).read_text())["command"]) or 0)
    assert measure.main([str(run_dir)]) == 0
    assert seen == [f"python -m ablations.measure {run_dir}"]
    assert not (run_dir / lock.NAME).exists()
