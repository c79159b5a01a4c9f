"""A real S3 endpoint for tests: moto's standalone server on 127.0.0.1, with IAM authentication on, a
bucket, and keys of its own, reached as a researcher reaches MinIO or another S3-compatible store:
through the standard AWS variables (pyarrow's S3 filesystem, boto3 and MLflow all read them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.mlflow_helpers import free_port

BUCKET = "lth"
# Requests moto serves before it checks signatures: the bucket, the user, its policy and its key.
_SETUP_REQUESTS = 4
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@dataclass
class S3:
    """The moto server: its address, the bucket and the keys the AWS variables hold."""

    endpoint: str
    key_id: str
    secret: str
    bucket: str = BUCKET
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint}  # MLflow's artifact store reads its own name for it

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` in the bucket, with its size."""
        out, pages = {}, self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()


def wait_for_url(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Until `url` answers; fails if `process` (the server behind it) exits first or `timeout` passes."""
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, f"{process.args[:3]} exited"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout:.0f} s") from None
            time.sleep(0.3)


def start_moto(timeout: float = 60) -> S3:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_url(f"{endpoint}/moto-api/", process, timeout)
    except BaseException:
        process.kill()
        raise
    import boto3

    setup = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
             "aws_secret_access_key": "setup"}
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="lth")
    iam.put_user_policy(UserName="lth", PolicyName="everything", PolicyDocument=_ALLOW_ALL)
    key = iam.create_access_key(UserName="lth")["AccessKey"]
    return S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], process=process)


PAUSE_DIR = "LTH_TEST_PAUSE_DIR"


def pause_upload(key: str, name: str) -> None:
    """`orchestrator.dense_cache.UPLOAD_HOOK` for a node-loss test: the first dense-run upload of the test
    (in $LTH_TEST_PAUSE_DIR) stops after its first file, records its node in `paused.json` and waits there,
    for the test to remove its node; later uploads go through."""
    import ray

    try:
        marker = os.open(Path(os.environ[PAUSE_DIR]) / "paused.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(marker, json.dumps({"key": key, "file": name, "node": ray.get_runtime_context().get_node_id(),
                                 "pid": os.getpid()}).encode())
    os.close(marker)
    while True:
        time.sleep(1)


@pytest.fixture(scope="session")
def s3():
    """One moto server for the whole session, its variables in the environment (set before any Ray starts
    in a test that asks for it first: Ray's worker processes take the environment of its start)."""
    server = start_moto()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.env.items():
            patch.setenv(name, value)
        yield server
    server.process.terminate()  # ours only, by its process
    server.process.wait(30)
