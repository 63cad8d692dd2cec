"""Telling a lost node from a failed trial, without a cluster: ``runner.node_lost``
against a faked head (its actor table and node list), ``runner.NodeLosses`` against
faked Tune trials, and the one line that replaces Ray's notices of a lost node. The
real thing (a node killed under a running sweep): test_cluster_two_nodes.py."""
from __future__ import annotations

import socket
import types

import pytest

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402
from ray.exceptions import ActorUnavailableError, RayTaskError  # noqa: E402

from ablations import cluster, runner  # noqa: E402

NODE = "ab" * 28


def actor_died() -> ActorUnavailableError:
    return ActorUnavailableError("RpcError: Socket closed", b"\x01" * 16)


@pytest.fixture
def head(monkeypatch):
    """A faked head: ``state["actor"]`` (the actor's GCS state) and ``state["node"]``
    (its node's entry in ``ray.nodes()``) as the test sets them."""
    import ray._private.state
    state = {"actor": "ALIVE", "node": {"NodeID": NODE, "Alive": True,
                                         "NodeManagerAddress": "127.0.0.1",
                                         "NodeManagerPort": 9}}
    monkeypatch.setattr(ray._private.state, "actors", lambda actor_id: {
        "Address": {"NodeID": NODE}, "State": state["actor"]})
    monkeypatch.setattr(ray, "nodes", lambda: [state["node"]])
    return state


def test_node_lost_asks_the_head_and_the_nodes_raylet(head):
    assert runner.node_lost(ValueError("a bug")) is False  # the trial raised
    assert runner.node_lost(RayTaskError("f", "tb", ValueError("x"))) is False
    # the node's raylet refuses connections (nothing listens on port 9): the node is gone
    assert runner.node_lost(actor_died()) is True
    with socket.socket() as s:  # a raylet that answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        head["node"]["NodeManagerPort"] = s.getsockname()[1]
        assert runner.node_lost(actor_died()) is None  # the head does not know yet
        head["actor"] = "DEAD"
        assert runner.node_lost(actor_died()) is False  # its worker died, its node lives
        head["node"]["Alive"] = False
        assert runner.node_lost(actor_died()) is True  # the head marked the node dead


def fake_trial(tmp_path, error, group=0, failures=1):
    path = tmp_path / f"error-{group}.pkl"
    path.write_bytes(cloudpickle.dumps(error))
    return types.SimpleNamespace(trial_id=f"t{group}", config={"group": group},
                                 pickled_error_file=str(path),
                                 run_metadata=types.SimpleNamespace(num_failures=failures))


def test_node_losses_uncount_a_retry_and_rerun_a_trial_tune_gave_up(tmp_path, monkeypatch,
                                                                    capsys):
    verdicts = {}
    monkeypatch.setattr(runner, "node_lost", lambda error: verdicts["now"])
    losses = runner.NodeLosses(lambda c: f"trial {c['group']}")
    assert not losses.died(fake_trial(tmp_path, ValueError("a bug")), gave_up=True)

    retried = fake_trial(tmp_path, actor_died(), group=0)
    gave_up = fake_trial(tmp_path, actor_died(), group=1)
    assert losses.died(retried, gave_up=False) and losses.died(gave_up, gave_up=True)
    verdicts["now"] = None  # the head cannot tell yet: nothing decided
    assert losses.settle() == [] and len(losses.waiting) == 2
    verdicts["now"] = True
    losses.checked = 0.0
    assert losses.settle() == []
    assert retried.run_metadata.num_failures == 0  # Tune's count of it taken back
    assert losses.lost == {1} and not losses.waiting  # Tune itself retries the other
    out = capsys.readouterr().out
    assert "trial 0: its node was lost; runs again from its checkpoint (not counted" in out
    assert "trial 1: its node was lost; runs again from its checkpoint after this round" in out


def test_a_dead_worker_on_a_live_node_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "node_lost", lambda error: False)
    losses = runner.NodeLosses(str)
    trial = fake_trial(tmp_path, actor_died())
    assert losses.died(trial, gave_up=True)
    losses.checked = 0.0
    assert losses.settle() == []  # "not the node" stands only after a few seconds
    assert losses.settle(wait_s=5, every_s=0) == [trial]
    assert not losses.lost and trial.run_metadata.num_failures == 1


def test_ray_notices_of_a_lost_node_are_one_line(monkeypatch, capsys):
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp
    printed, forwarded = [], []
    monkeypatch.setattr(worker, "print_to_stdstream", lambda data, ignore: printed.append(data))
    monkeypatch.setattr(disp, "handlers", [("ray_print_logs", forwarded.append)])
    assert cluster.quiet_node_notices()
    dying = "Raylet is terminated. Termination is unexpected.\n    [state-dump] ..."
    dead = (f"The node with node id: {NODE} and address: 10.0.0.7 and node name: 10.0.0.7 "
            "has been marked dead because the detector has missed too many heartbeats")
    for text in (dying, dead, "something else"):
        worker.print_to_stdstream({"lines": [text], "pid": "raylet", "is_err": False}, False)
    assert [d["lines"] for d in printed] == [["something else"]]
    assert capsys.readouterr().out == (f"Ray lost node {NODE[:12]} at 10.0.0.7 (it stopped "
                                       "answering); the trials it ran run again from their "
                                       "checkpoints\n")
    # then the head's complaints about that node's resources are dropped, nothing else
    for line in (f"Failed to remove 1 bundle(s) at node {NODE}", "another line"):
        disp.emit({"lines": [line], "pid": "gcs_server", "is_err": True})
    assert [d["lines"] for d in forwarded] == [["another line"]]
