"""The fetch that brings s3:// inputs into a pod, against a real S3-compatible server (moto's, on
127.0.0.1): a model folder and a dataset file arrive byte-identical, a rerun downloads nothing, and
missing data or an unreachable endpoint fail fast with the bucket/key named and no secret shown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from tuneloop_trainer.fetch import explain

SECRET = "do-not-log-this-secret-value"
BUCKET = "models"
MODEL_FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": os.urandom(9 * 1024 * 1024),  # above boto3's multipart threshold: ranged GETs
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
}
DATASET = b'{"text": "hello"}\n{"text": "world"}\n'


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      aws_access_key_id="test-key-id", aws_secret_access_key=SECRET)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="llama/", Body=b"")  # a folder marker, as consoles create them
    for name, body in MODEL_FILES.items():
        s3.put_object(Bucket=BUCKET, Key=f"llama/{name}", Body=body)
    s3.put_object(Bucket=BUCKET, Key="llama-70b/config.json", Body=b"{}")  # shares the prefix "llama"
    s3.put_object(Bucket=BUCKET, Key="data/support/train.jsonl", Body=DATASET)
    yield url
    server.stop()


def run_fetch(endpoint_url: str, *pairs: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    environment.update(AWS_ENDPOINT_URL=endpoint_url, AWS_ACCESS_KEY_ID="test-key-id",
                       AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                       AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, **env)
    process = subprocess.run([sys.executable, "-m", "tuneloop_trainer.fetch", *map(str, pairs)],
                             env=environment, capture_output=True, text=True, timeout=120)
    assert SECRET not in process.stdout + process.stderr
    return process


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_folder_and_a_file_arrive_byte_identical(endpoint, tmp_path):
    process = run_fetch(endpoint, "s3://models/llama", tmp_path / "model",
                        "s3://models/data/support/train.jsonl", tmp_path / "dataset")

    assert process.returncode == 0, process.stderr
    assert files_under(tmp_path / "model") == MODEL_FILES
    assert files_under(tmp_path / "dataset") == {"train.jsonl": DATASET}
    assert "s3://models/llama -> " in process.stderr and "3 downloaded" in process.stderr


def test_the_data_check_fetches_a_model_folder_without_its_weights(endpoint, tmp_path):
    from tuneloop.runtime.manifests import WEIGHT_FILES

    excluded = [option for pattern in WEIGHT_FILES for option in ("--exclude", pattern)]
    process = run_fetch(endpoint, *excluded, "s3://models/llama", tmp_path / "model",
                        "s3://models/data/support/train.jsonl", tmp_path / "dataset")

    assert process.returncode == 0, process.stderr
    assert files_under(tmp_path / "model") == {name: body for name, body in MODEL_FILES.items()
                                               if not name.endswith(".safetensors")}
    # A pattern leaves out a folder's objects, never the one object a URI names.
    assert run_fetch(endpoint, "--exclude", "*.jsonl", "s3://models/data/support/train.jsonl",
                     tmp_path / "named").returncode == 0
    assert files_under(tmp_path / "named") == {"train.jsonl": DATASET}


def test_a_second_run_downloads_only_what_is_missing(endpoint, tmp_path):
    model = tmp_path / "model"
    assert run_fetch(endpoint, "s3://models/llama/", model).returncode == 0
    config_mtime = (model / "config.json").stat().st_mtime_ns

    again = run_fetch(endpoint, "s3://models/llama/", model)

    assert again.returncode == 0, again.stderr
    assert "0 downloaded" in again.stderr and "3 already present" in again.stderr
    assert (model / "config.json").stat().st_mtime_ns == config_mtime

    (model / "model.safetensors").write_bytes(b"truncated by a killed pod")
    repaired = run_fetch(endpoint, "s3://models/llama/", model)

    assert "1 downloaded" in repaired.stderr
    assert files_under(model) == MODEL_FILES


def test_a_missing_bucket_fails_and_names_it(endpoint, tmp_path):
    process = run_fetch(endpoint, "s3://no-such-bucket/llama", tmp_path / "model")

    assert process.returncode == 1
    assert "s3://no-such-bucket/llama" in process.stderr and "does not exist" in process.stderr
    assert not (tmp_path / "model").exists()


def test_a_missing_key_fails_and_names_it(endpoint, tmp_path):
    process = run_fetch(endpoint, "s3://models/mistral-7b", tmp_path / "model")

    assert process.returncode == 1
    assert "s3://models/mistral-7b: no object at this key or under it" in process.stderr


def test_an_unreachable_endpoint_fails_fast_and_says_so(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()

    process = run_fetch(f"http://127.0.0.1:{closed_port}", "s3://models/llama", tmp_path / "model",
                        AWS_MAX_ATTEMPTS="1")

    assert process.returncode == 3
    assert f"s3://models/llama: cannot reach the S3 endpoint http://127.0.0.1:{closed_port}" in process.stderr
    assert time.monotonic() - started < 15


def test_pairs_must_be_complete(endpoint, tmp_path):
    assert run_fetch(endpoint, "s3://models/llama").returncode == 2


@pytest.mark.parametrize(("code", "expected"), [
    ("AccessDenied", "s3://models/llama: access denied (the credentials need s3:ListBucket and s3:GetObject)"),
    ("InvalidAccessKeyId", "s3://models/llama: the S3 endpoint http://minio:9000 rejected the credentials"),
    ("NoSuchBucket", "s3://models/llama: bucket 'models' does not exist at http://minio:9000"),
])
def test_errors_name_the_bucket_and_key(code, expected):
    error = ClientError({"Error": {"Code": code, "Message": "..."}}, "ListObjectsV2")

    assert str(explain(error, "models", "llama", "http://minio:9000")).startswith(expected)
