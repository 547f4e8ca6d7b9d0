"""`tuneloop serve --local [RUN]`: an OpenAI-compatible endpoint on 127.0.0.1 over a local run's base
model and tuned model (local_serving/app.py). In a cluster a ModelDeployment serves adapters (vLLM)."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from tuneloop.cli.chat import RUN_HELP, load_run

HOST = "127.0.0.1"
DEFAULT_PORT = 8000
EPILOG = """examples:
  tuneloop serve --local                      # the newest run in ./tuneloop-work, on port 8000
  tuneloop serve --local acme-tickets --port 8001
  tuneloop serve --local --port 0             # any free port; the ready line says which

then, from any OpenAI client (base_url http://127.0.0.1:8000/v1, any api_key):
  curl http://127.0.0.1:8000/v1/models
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "tuned", "messages": [{"role": "user", "content": "Hello"}]}'

model "base" is the base model, "tuned" (or the job's name) the base model with the run's adapter;
answers are greedy, with the run's system prompt, exactly as the evaluator generated them."""


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is outside 0..65535")
    return port


def listening_socket(port: int) -> socket.socket:
    """Bound before uvicorn starts, so port 0 can be reported as the port it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {HOST}:{port}: {error.strerror} (another server there? try --port 0)") \
            from error
    return sock


def ready_line(base_url: str) -> str:
    body = '{"model": "tuned", "messages": [{"role": "user", "content": "Hello"}]}'
    return (f"ready: OpenAI-compatible endpoint {base_url} (models base, tuned); try: curl {base_url}/chat/completions "
            f"-H 'Content-Type: application/json' -d '{body}'")


def command_serve(args: argparse.Namespace) -> int:
    if not args.local:
        print("tuneloop serve needs --local (serve a local run on this machine); in a cluster, a "
              "ModelDeployment serves the adapter with vLLM", file=sys.stderr)
        return 2
    try:
        import uvicorn

        from tuneloop.local_serving.app import create_app
    except ImportError as error:
        print(f"tuneloop serve needs {error.name}: pip install 'tuneloop[local,evaluator]'", file=sys.stderr)
        return 1

    try:
        sock = listening_socket(args.port)
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    loaded = load_run(args)
    if loaded is None:
        sock.close()
        return 1
    run, models = loaded
    base_url = f"http://{HOST}:{sock.getsockname()[1]}/v1"
    app = create_app(models, on_ready=lambda: print(f"{run.label}: {ready_line(base_url)}", flush=True))
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible endpoint over a local run's base and tuned model",
        description=f"Serve a local run's base model and tuned model (base + its adapter) on {HOST}\n"
                    "with an OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (not streaming).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("run", nargs="?", metavar="RUN", help=RUN_HELP)
    serve.add_argument("--local", action="store_true", help="serve a run of `tuneloop run --local` (required)")
    serve.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                       help=f"port on {HOST} (default: %(default)s; 0: any free port)")
    serve.add_argument("--workdir", type=Path, default=Path("tuneloop-work"),
                       help="the work folder of `tuneloop run --local` (default: %(default)s)")
    serve.set_defaults(handler=command_serve)
