"""Ray workers' interpreter-exit noise stays out of the user's terminal; real errors do not."""
import os
import subprocess
import sys
import textwrap

from ablations.exit_noise import ExitNoiseFilter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a Ray worker printed at exit in a tuning e2e run (issue 13), addresses shortened.
NOISE = [
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f>",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
    "    def _remove(item, selfref=ref(self)):",
    "",
    '  File "/v/ray/_private/worker.py", line 1063, in sigterm_handler',
    "    raise_sys_exit_with_custom_error_message(",
    '  File "python/ray/_raylet.pyx", line 123, in ray._raylet.raise_sys_exit_with_custom_error_message',
    "SystemExit: 1",
]
REAL = [
    "Exception ignored in: <function Foo.__del__ at 0x7f>",
    "Traceback (most recent call last):",
    '  File "/x/foo.py", line 3, in __del__',
    "RuntimeError: the file handle was already closed",
]


def test_noise_block_is_dropped_and_neighbours_kept():
    f = ExitNoiseFilter()
    assert f.lines("w", ["before", *NOISE, "after"]) == ["before", "after"]


def test_a_real_exception_block_is_kept_whole():
    f = ExitNoiseFilter()
    assert f.lines("w", [*REAL, *NOISE]) == REAL
    # SystemExit raised by user code, not by a signal handler, is kept too
    own = ["Exception ignored in: <function g>", "Traceback (most recent call last):",
           '  File "/x/g.py", line 1, in g', "SystemExit: 3"]
    assert f.lines("w", own) == own


def test_block_split_across_batches_is_held_until_its_end():
    f = ExitNoiseFilter()
    assert f.lines("w", ["a", *NOISE[:4]]) == ["a"]
    assert f.lines("other", ["b"]) == ["b"]  # another worker's lines are not held
    assert f.lines("w", [*NOISE[4:], "c"]) == ["c"]
    assert f.lines("w", REAL[:2]) == []
    assert f.lines("w", REAL[2:]) == REAL


# The raylet's debug state, as it forwards it when it dies (issue 25), shortened.
STATE_DUMP = [
    "[2025-01-01 10:00:00,000 I 123 123] (raylet) node_manager.cc:555: [state-dump] NodeManager:",
    "[2025-01-01 10:00:00,000 I 123 123] (raylet) node_manager.cc:555: [state-dump] "
    "Node ID: 0123abcd",
]


def test_rays_state_dump_is_dropped_and_everything_once_ray_is_lost():
    f = ExitNoiseFilter()
    assert f.lines("raylet", ["kept", *STATE_DUMP, *NOISE, "also kept"]) == ["kept", "also kept"]
    try:
        ExitNoiseFilter.ray_lost = True  # set by ablations.cluster.watch
        assert f.lines("w", ["Raylet is terminated", *REAL]) == []
    finally:
        ExitNoiseFilter.ray_lost = False
    assert f.lines("w", REAL) == REAL


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from ablations import cluster
    cluster.connect(None)
    import ray

    @ray.remote(num_cpus=0)
    def noisy(lines):
        print("\\n".join(lines), file=sys.stderr, flush=True)
        return 1

    ray.get(noisy.remote({noise!r}))
    ray.get(noisy.remote({real!r}))
    ray.get(ray.remote(num_cpus=0)(lambda: print("\\n".join({dump!r}), flush=True)).remote())
    time.sleep(3)  # let Ray's log monitor forward both
    cluster.disconnect()
""")


def test_installed_on_a_real_local_ray(tmp_path):
    """Through Ray's own log forwarding: the noise block vanishes, the real one arrives."""
    script = tmp_path / "noise.py"
    script.write_text(SCRIPT.format(root=ROOT, noise=NOISE, real=REAL,
                                    dump=[*STATE_DUMP, "a worker's own line"]))
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=180, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert "RuntimeError: the file handle was already closed" in p.stderr, p.stderr
    assert "sigterm_handler" not in p.stderr and "SystemExit" not in p.stderr, p.stderr
    assert "a worker's own line" in p.stdout and "[state-dump]" not in p.stdout, p.stdout
