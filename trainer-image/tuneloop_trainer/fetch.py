"""python -m tuneloop_trainer.fetch s3://bucket/key DEST [s3://bucket/key DEST ...]

Copies inputs from S3-compatible storage (AWS S3, MinIO, Ceph RGW) into local folders; in a
cluster it is the init container that runs before the trainer. A URI naming one object lands as
DEST/<its file name>; any other URI is a prefix, and every object under it lands under DEST at its
path relative to the prefix (a model folder). `--exclude GLOB` leaves out the objects of a prefix whose
relative path matches (the data check fetches a model's tokenizer without its weights).

- Objects already in DEST with the same size are skipped: a second run downloads only what is missing.
- Each file is written under a temporary name and renamed once complete: no half files.
- Credentials, endpoint and region come from the standard variables (AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_MAX_ATTEMPTS) or the pod's own
  identity (IRSA and the like). Secrets are never logged.

Exit status 0: everything is in place. 1: the data is not there or may not be read (no such
bucket, nothing under the key, access denied); retrying cannot help. 3: the endpoint could not be
reached or timed out; a retry may succeed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

log = logging.getLogger("tuneloop_trainer.fetch")
DATA_UNAVAILABLE_EXIT = 1
ENDPOINT_UNREACHABLE_EXIT = 3
FILES_AT_ONCE = 4
RANGES_PER_FILE = 8  # concurrent ranged GETs within one large object (a model shard)
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
DENIED_CODES = {"403", "AccessDenied", "AllAccessDisabled"}
BAD_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
UNREACHABLE_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)


class FetchError(Exception):
    """The data is not there or may not be read."""


class EndpointUnreachable(FetchError):
    pass


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise FetchError(f"{uri!r} is not an s3://bucket/key URI")
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise FetchError(f"{uri!r} names no bucket")
        return cls(bucket, key)

    @property
    def names_folder(self) -> bool:
        return not self.key or self.key.endswith("/")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    target: Path

    def is_present(self) -> bool:
        return self.target.is_file() and self.target.stat().st_size == self.size


def s3_client(files_at_once: int) -> Any:
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=10, read_timeout=60,
        max_pool_connections=files_at_once * RANGES_PER_FILE,
        # S3-compatible stores in a cluster have no wildcard DNS for bucket.host names.
        s3={"addressing_style": "path" if custom_endpoint else "auto"},
    )
    return boto3.client("s3", config=config)


def explain(error: Exception, bucket: str, key: str, endpoint: str) -> FetchError:
    """A message that names the bucket/key and says what to do, never the credentials."""
    where = f"s3://{bucket}/{key}"
    if isinstance(error, UNREACHABLE_ERRORS):
        return EndpointUnreachable(f"{where}: cannot reach the S3 endpoint {endpoint}: {error}")
    if isinstance(error, NoCredentialsError):
        return FetchError(f"{where}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(the operator's s3SecretName) or give the pod an identity")
    if not isinstance(error, ClientError):
        return FetchError(f"{where}: {error}")
    code = error.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return FetchError(f"{where}: bucket {bucket!r} does not exist at {endpoint}")
    if code in NOT_FOUND_CODES:
        return FetchError(f"{where}: no such object")
    if code in DENIED_CODES:
        return FetchError(f"{where}: access denied (the credentials need s3:ListBucket and s3:GetObject)")
    if code in BAD_CREDENTIAL_CODES:
        return FetchError(f"{where}: the S3 endpoint {endpoint} rejected the credentials ({code})")
    return FetchError(f"{where}: {code or 'error'}: {error.response.get('Error', {}).get('Message', error)}")


def single_object(client: Any, location: S3Location, dest: Path) -> RemoteObject | None:
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
            return None
        raise
    return RemoteObject(location.key, head["ContentLength"], dest / PurePosixPath(location.key).name)


def objects_under(client: Any, location: S3Location, dest: Path) -> list[RemoteObject]:
    prefix = location.key if location.names_folder else location.key + "/"
    objects = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix):
        for listed in page.get("Contents", []):
            if listed["Key"].endswith("/"):
                continue  # a folder marker, not data
            relative = PurePosixPath(listed["Key"][len(prefix):])
            if relative.is_absolute() or ".." in relative.parts:
                raise FetchError(f"s3://{location.bucket}/{listed['Key']}: key would land outside {dest}")
            objects.append(RemoteObject(listed["Key"], listed["Size"], dest.joinpath(*relative.parts)))
    return objects


def find_objects(client: Any, location: S3Location, dest: Path) -> list[RemoteObject]:
    found = None if location.names_folder else single_object(client, location, dest)
    if found is not None:
        return [found]
    objects = objects_under(client, location, dest)
    if not objects:
        raise FetchError(f"{location}: no object at this key or under it in bucket {location.bucket!r}")
    return objects


def download(client: Any, bucket: str, remote: RemoteObject) -> None:
    remote.target.parent.mkdir(parents=True, exist_ok=True)
    partial = remote.target.with_name(f".{remote.target.name}.tuneloop-partial")
    transfer = TransferConfig(max_concurrency=RANGES_PER_FILE)
    try:
        with partial.open("wb") as handle:
            client.download_fileobj(bucket, remote.key, handle, Config=transfer)
        received = partial.stat().st_size
    except (ClientError, BotoCoreError) as error:
        partial.unlink(missing_ok=True)
        raise explain(error, bucket, remote.key, client.meta.endpoint_url) from error
    except OSError as error:  # a full or read-only volume
        partial.unlink(missing_ok=True)
        raise FetchError(f"s3://{bucket}/{remote.key} -> {remote.target}: {error}") from error
    if received != remote.size:
        partial.unlink()
        raise FetchError(f"s3://{bucket}/{remote.key}: got {received} bytes, expected {remote.size} "
                         "(was it rewritten during the download?)")
    partial.replace(remote.target)


def download_all(client: Any, bucket: str, objects: list[RemoteObject], files_at_once: int) -> None:
    with ThreadPoolExecutor(max_workers=files_at_once) as pool:
        futures = [pool.submit(download, client, bucket, remote) for remote in objects]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def fetch(client: Any, uri: str, dest: Path, files_at_once: int = FILES_AT_ONCE,
          exclude: tuple[str, ...] = ()) -> int:
    """Brings uri into dest; returns how many files were downloaded (the rest were present)."""
    location = S3Location.parse(uri)
    try:
        objects = find_objects(client, location, dest)
    except (ClientError, BotoCoreError) as error:
        raise explain(error, location.bucket, location.key, client.meta.endpoint_url) from error
    if exclude and objects[0].key != location.key:  # a folder, not the one object named
        objects = [remote for remote in objects
                   if not any(fnmatch(remote.target.relative_to(dest).as_posix(), pattern) for pattern in exclude)]
    missing = [remote for remote in objects if not remote.is_present()]
    download_all(client, location.bucket, missing, files_at_once)
    megabytes = sum(remote.size for remote in missing) / 1e6
    log.info("%s -> %s: %d downloaded (%.1f MB), %d already present",
             location, dest, len(missing), megabytes, len(objects) - len(missing))
    return len(missing)


def parse_pairs(parser: argparse.ArgumentParser, pairs: list[str]) -> list[tuple[str, Path]]:
    if len(pairs) % 2:
        parser.error("expected pairs of S3_URI DEST")
    return [(pairs[index], Path(pairs[index + 1])) for index in range(0, len(pairs), 2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneloop_trainer.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", metavar="S3_URI DEST", help="what to fetch and the folder it goes to")
    parser.add_argument("--files-at-once", type=int, default=FILES_AT_ONCE, help="parallel downloads")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="leave out objects of a folder whose relative path matches (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    client = s3_client(args.files_at_once)
    try:
        for uri, dest in parse_pairs(parser, args.pairs):
            fetch(client, uri, dest, args.files_at_once, tuple(args.exclude))
    except EndpointUnreachable as error:
        log.error("%s", error)
        return ENDPOINT_UNREACHABLE_EXIT
    except FetchError as error:
        log.error("%s", error)
        return DATA_UNAVAILABLE_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
