"""MLflow model registry webhooks: a moved alias reaches the operator without waiting for the next poll.

MLflow (3.3 and later, SQL-backed servers) POSTs `model_version_alias.created|deleted` events to
registered webhooks, signed with HMAC-SHA256 over `<delivery id>.<timestamp>.<body>` (headers
X-MLflow-Delivery-Id, X-MLflow-Timestamp, X-MLflow-Signature: `v1,<base64>`). The receiver does
not trust the payload's version: it only marks the alias stale, so the next reconcile pass asks
MLflow itself. A forged event can at most cause an extra lookup.

Register it once per MLflow server, e.g.:
    MlflowClient().create_webhook(name="tuneloop", url="http://tuneloop-operator.tuneloop:8081/mlflow/webhook",
                                  events=["model_version_alias.created", "model_version_alias.deleted"],
                                  secret=<the operator's secret: TUNELOOP_MLFLOW_WEBHOOK_SECRET, or the
                                          file TUNELOOP_MLFLOW_WEBHOOK_SECRET_FILE names>)
(an in-cluster http:// URL needs MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true and
MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https on the MLflow server: it allows public https URLs only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time

from aiohttp import web

from tuneloop.registry.aliases import AliasResolver
from tuneloop.secret_settings import setting_from_environment

log = logging.getLogger("tuneloop.webhooks")
PATH = "/mlflow/webhook"
MAX_AGE_SECONDS = 300  # older deliveries are replays
ALIAS_EVENTS = {("model_version_alias", "created"), ("model_version_alias", "deleted")}
SECRET_ENV = "TUNELOOP_MLFLOW_WEBHOOK_SECRET"
SECRET_FILE_ENV = "TUNELOOP_MLFLOW_WEBHOOK_SECRET_FILE"  # a mounted Secret (the Helm chart)


def secret_from_environment(environ: dict[str, str] | None = None) -> str:
    """The signing secret ("" when none is set); ValueError when it cannot be read."""
    return setting_from_environment(os.environ if environ is None else environ, SECRET_ENV, SECRET_FILE_ENV,
                                    "webhook secret") or ""


def signature(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str] | web.BaseRequest, body: str, now: float) -> str | None:
    """Why the delivery is refused, or None when its signature and age are right."""
    delivery_id = headers.get("X-MLflow-Delivery-Id", "")
    timestamp = headers.get("X-MLflow-Timestamp", "")
    given = headers.get("X-MLflow-Signature", "")
    if not (delivery_id and timestamp and given):
        return "unsigned delivery"
    try:
        age = now - int(timestamp)
    except ValueError:
        return f"timestamp {timestamp!r} is not a Unix time"
    if abs(age) > MAX_AGE_SECONDS:
        return f"timestamp is {age:.0f}s old"
    if not hmac.compare_digest(given, signature(secret, delivery_id, timestamp, body)):
        return "signature does not match"
    return None


def webhook_app(aliases: AliasResolver, secret: str) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.text()
        refused = verify(secret, request.headers, body, time.time())
        if refused:
            log.warning("MLflow webhook from %s refused: %s", request.remote, refused)
            return web.json_response({"error": refused}, status=401)
        try:
            event = json.loads(body)
            key = (event["entity"], event["action"])
            data = event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "not an MLflow webhook event"}, status=400)
        if key in ALIAS_EVENTS and data.get("name") and data.get("alias"):
            aliases.forget(data["name"], data["alias"])
            log.info("MLflow: alias %s@%s %s", data["name"], data["alias"], event["action"])
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post(PATH, receive)
    return app


async def serve(aliases: AliasResolver, secret: str, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(webhook_app(aliases, secret))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
