"""Run the feedback service with uvicorn: `serve(...)` for the `tuneloop` command line,
`python -m tuneloop.feedback` on its own."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from tuneloop.feedback.app import create_app
from tuneloop.feedback.auth import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKENS_FILE_ENV,
    TokenError,
    Tokens,
    tokens_from_environment,
)
from tuneloop.feedback.database import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    DatabaseUrlError,
    check_reachable,
    database_url_from_environment,
    make_engine,
)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, database_url: str | None = None,
          token: str | Tokens | None = None, *, allow_no_auth: bool = False, log_level: str = "info") -> None:
    """Serve until interrupted. database_url None: TUNELOOP_FEEDBACK_DATABASE_URL, else a SQLite file
    in the working folder; token None: the teams' tokens of TUNELOOP_FEEDBACK_TOKENS_FILE and the
    service-wide TUNELOOP_FEEDBACK_TOKEN (or the file in TUNELOOP_FEEDBACK_TOKEN_FILE). Raises
    TokenError without a token unless allow_no_auth, DatabaseUrlError for a URL it cannot use."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if token is None:
        token = tokens_from_environment()
    url = database_url or database_url_from_environment()
    probe = make_engine(url)
    try:
        check_reachable(probe)
    finally:
        probe.dispose()
    app = create_app(url, token, allow_no_auth=allow_no_auth)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop feedback serve", description="Run the Tuneloop feedback service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Bearer tokens: one per team, scoped to a namespace and models, in the YAML file named\n"
               f"by {TOKENS_FILE_ENV}; and/or one service-wide token in {TOKEN_ENV}\n"
               f"or the file named by {TOKEN_FILE_ENV}.\n\n"
               "examples:\n"
               f"  {TOKENS_FILE_ENV}=tokens.yaml tuneloop feedback serve --database-url sqlite:///feedback.db\n"
               "  tuneloop feedback serve --insecure-no-auth --port 8080     # local play only")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                                                             "0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--database-url", help=f"postgresql://user:password@host/db or sqlite:///file.db "
                                               f"(default: {DATABASE_URL_ENV}, else {DEFAULT_DATABASE_URL})")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="serve without a token: anyone who reaches the port may read and write; local play only")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, args.database_url, allow_no_auth=args.insecure_no_auth, log_level=args.log_level)
    except (TokenError, DatabaseUrlError) as error:
        parser.error(str(error))
    return 0
