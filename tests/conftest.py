import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")
# every process the tests start carries this session's token: tests/ray_procs.py finds
# and stops this session's Ray by it, never anyone else's
# pytest-xdist: each worker is its own session with its own token, so one worker's
# cleanup never touches the other's Ray (the workers inherit the controller's token)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["RESABLATE_TEST_RAY"] = __import__("uuid").uuid4().hex
else:
    os.environ.setdefault("RESABLATE_TEST_RAY", __import__("uuid").uuid4().hex)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests import hypothesis themselves and fail loudly there
    settings = None

if settings is not None:
    # "ci" (the default): a fixed budget and a derandomized seed, so every run tests the
    # same examples and a failure reproduces; no deadline, since a report build takes
    # seconds on a loaded 2-core machine; no example database to keep in the repo.
    # Tests marked slow ask for more examples with an explicit @settings(max_examples=...).
    # HYPOTHESIS_PROFILE=dev explores new random examples on each run.
    _quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=15, derandomize=True, deadline=None,
                              database=None, print_blob=True, suppress_health_check=_quiet)
    settings.register_profile("dev", max_examples=100, deadline=None,
                              suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4. Each worker
    imports torch and matplotlib and some tests start a local Ray, so more workers than
    that add memory and contention, not speed."""
    return max(1, min(4, len(os.sched_getaffinity(0))))
