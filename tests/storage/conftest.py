"""A real S3-compatible server on 127.0.0.1 (moto's ``ThreadedMotoServer``), started
and stopped by the tests, with a bucket, and the environment that points at it."""
from __future__ import annotations

import os

import pytest

S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
          "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
          "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
          "AWS_EC2_METADATA_DISABLED")


@pytest.fixture(scope="session")
def s3_server():
    """``http://127.0.0.1:PORT`` of a moto S3 server for this test session."""
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_env(endpoint: str, tmp_path) -> dict:
    """The S3 environment of a client of the test server (fake credentials; config
    files that do not exist, so nothing of this machine's own AWS setup is used)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "no-config")}


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch):
    """This process pointed at the test server, with a fresh bucket; yields its name."""
    for k in S3_ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_env(s3_server, tmp_path).items():
        monkeypatch.setenv(k, v)
    import pyarrow.fs as pafs
    bucket = f"b{os.urandom(4).hex()}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(bucket)
    yield bucket
