"""Following an MLflow alias: lookups against a real `mlflow server`, and its registry webhooks."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest
from mlflow.tracking import MlflowClient

from test_registry import mlflow_server, server_url  # noqa: F401  (fixtures)
from tuneloop.registry import webhooks as mlflow_webhooks
from tuneloop.registry.aliases import AliasResolver

MODEL = "acme-tickets-aliases"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registry(mlflow_server):  # noqa: F811
    client = MlflowClient(tracking_uri=mlflow_server)
    client.create_registered_model(MODEL)
    for _ in range(3):
        client.create_model_version(MODEL, source="s3://adapters/acme-tickets")
    return client


def test_an_alias_resolves_over_rest_and_is_polled_not_asked_on_every_pass(mlflow_server, registry):  # noqa: F811
    now = [0.0]
    resolver = AliasResolver(mlflow_server, poll_seconds=30, clock=lambda: now[0])

    async def scenario():
        assert await resolver.resolve(MODEL, "champion") is None  # not set yet
        registry.set_registered_model_alias(MODEL, "champion", "1")
        assert await resolver.resolve(MODEL, "champion") is None, "the poll period has not passed"
        now[0] += 31
        assert await resolver.resolve(MODEL, "champion") == "1"
        registry.set_registered_model_alias(MODEL, "champion", "2")
        resolver.forget(MODEL, "champion")  # what a webhook does
        assert await resolver.resolve(MODEL, "champion") == "2"
        assert resolver.problem(MODEL, "champion") is None

    asyncio.run(scenario())


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_a_versions_lora_options_are_read_from_its_tag_over_rest_and_from_a_sqlite_store(
        store, mlflow_server, registry, tmp_path):  # noqa: F811
    if store == "server":
        uri, client = mlflow_server, registry
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        client.create_registered_model(MODEL)
        for _ in range(3):
            client.create_model_version(MODEL, source="s3://adapters/acme-tickets")
    client.set_model_version_tag(MODEL, "2", "tuneloop.dev/lora", '{"r":64,"useDora":true,"useRslora":false}')
    resolver = AliasResolver(uri)

    async def scenario():
        assert await resolver.adapter_options(MODEL, "2") == {"r": 64, "useDora": True, "useRslora": False}
        assert await resolver.adapter_options(MODEL, "1") is None  # registered without the tag
        assert await resolver.adapter_options(MODEL, "99") is None  # no such version

    asyncio.run(scenario())


def test_an_unreachable_mlflow_keeps_the_last_version_and_says_why():
    now = [0.0]
    resolver = AliasResolver(f"http://127.0.0.1:{free_port()}", poll_seconds=30, clock=lambda: now[0])
    resolver.learn(MODEL, "champion", "4")
    now[0] += 31

    async def scenario():
        assert await resolver.resolve(MODEL, "champion") == "4"
        assert "could not be asked" in resolver.problem(MODEL, "champion")

    asyncio.run(scenario())


async def post(url: str, body: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status


def test_the_receiver_refuses_unsigned_forged_and_replayed_deliveries():
    resolver = AliasResolver("http://unused", poll_seconds=3600)
    resolver.learn(MODEL, "champion", "1")
    port = free_port()
    url = f"http://127.0.0.1:{port}{mlflow_webhooks.PATH}"
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": MODEL, "alias": "champion", "version": "9"}})

    def signed(secret: str, timestamp: int) -> dict[str, str]:
        return {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": str(timestamp),
                "X-MLflow-Signature": mlflow_webhooks.signature(secret, "d1", str(timestamp), body)}

    async def scenario():
        runner = await mlflow_webhooks.serve(resolver, "right", port, host="127.0.0.1")
        try:
            assert await post(url, body, {}) == 401
            assert await post(url, body, signed("wrong", int(time.time()))) == 401
            assert await post(url, body, signed("right", int(time.time()) - 3600)) == 401
            assert resolver.known[(MODEL, "champion")].at > float("-inf"), "nothing refused reached the cache"
            assert await post(url, body, signed("right", int(time.time()))) == 200
            assert resolver.known[(MODEL, "champion")].at == float("-inf")
            assert resolver.known[(MODEL, "champion")].version == "1", "the payload's version is not trusted"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_mlflow_registry_webhooks_make_a_moved_alias_known_before_the_next_poll(mlflow_server, registry):  # noqa: F811
    port = free_port()
    registry.create_webhook(name="tuneloop-test", url=f"http://127.0.0.1:{port}{mlflow_webhooks.PATH}",
                            events=["model_version_alias.created", "model_version_alias.deleted"], secret="s3cret")
    resolver = AliasResolver(mlflow_server, poll_seconds=3600)
    time.sleep(1.5)  # the server's list of webhooks is cached for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)

    async def scenario():
        runner = await mlflow_webhooks.serve(resolver, "s3cret", port, host="127.0.0.1")
        try:
            registry.set_registered_model_alias(MODEL, "canary", "1")
            assert await resolver.resolve(MODEL, "canary") == "1"
            await asyncio.to_thread(registry.set_registered_model_alias, MODEL, "canary", "3")
            for _ in range(200):  # the server delivers from a thread pool of its own
                if await resolver.resolve(MODEL, "canary") == "3":
                    break
                await asyncio.sleep(0.05)
            assert await resolver.resolve(MODEL, "canary") == "3", "the webhook did not arrive within 10 s"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_the_webhook_secret_comes_from_a_mounted_file_or_the_environment(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-secret-volume\n")
    assert mlflow_webhooks.secret_from_environment({"TUNELOOP_MLFLOW_WEBHOOK_SECRET_FILE": str(secret_file)}) == \
        "from-the-secret-volume"
    assert mlflow_webhooks.secret_from_environment({"TUNELOOP_MLFLOW_WEBHOOK_SECRET": "from-env"}) == "from-env"
    assert mlflow_webhooks.secret_from_environment({}) == ""
    with pytest.raises(ValueError, match=f"cannot read the webhook secret file {tmp_path / 'missing'} "
                                         r"\(TUNELOOP_MLFLOW_WEBHOOK_SECRET_FILE\): No such file"):
        mlflow_webhooks.secret_from_environment({"TUNELOOP_MLFLOW_WEBHOOK_SECRET_FILE": str(tmp_path / "missing")})
