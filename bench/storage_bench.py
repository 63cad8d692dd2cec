#!/usr/bin/env python
"""The overhead of an object store on a sweep: the same sweep with local storage and
with ``--storage s3://...`` (moto's S3 server on 127.0.0.1), alternated A B A B in one
run, wall time of each ``sweep.py`` process. A loopback server measures the project's
own cost (staging, mirroring every write, pulling fragments, pushing the results
folder), not a network's; results and the command are in bench/README.md.

    python bench/storage_bench.py --data-root ../shared/data/cifar10-subset --rounds 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_args(data_root: str) -> list[str]:
    """4 ResNet-20 trials of ~30 s each on 2 cores (5 epochs of 5,000 images), 2 at once."""
    return ["--families", "resnet", "--depths", "20", "--residual", "both", "--seeds", "2",
            "--epochs", "5", "--subset", "5000", "--data-root", data_root,
            "--measure", "none", "--wandb", "disabled"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    import logging
    from moto.server import ThreadedMotoServer
    import pyarrow.fs as pafs
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    tmp = tempfile.mkdtemp(prefix="storage-bench-")
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("bench")
    times = {"local": [], "s3": []}
    try:
        for r in range(a.rounds):
            for arm in ("local", "s3"):
                extra = ["--storage", f"s3://bench/r{r}"] if arm == "s3" else []
                cmd = [sys.executable, os.path.join(ROOT, "sweep.py"), *sweep_args(a.data_root),
                       "--out", os.path.join(tmp, arm), "--name", f"r{r}", *extra]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-2000:])
                    return 1
                times[arm].append(wall)
                print(f"round {r} {arm:5s} {wall:6.1f} s  ({proc.stdout.strip().splitlines()[-1]})",
                      flush=True)
    finally:
        server.stop()
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"mean wall: local {mean['local']:.1f} s, s3 {mean['s3']:.1f} s; "
          f"s3/local = {mean['s3'] / mean['local']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
