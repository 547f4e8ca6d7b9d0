"""`tuneloop operator` runs the Kubernetes operator; `tuneloop crds` prints its CustomResourceDefinitions."""

from __future__ import annotations

import argparse
import random


def command_crds(args: argparse.Namespace) -> int:
    from tuneloop.api.crd import render

    print(render(all_crds()), end="")
    return 0


def all_crds() -> list:
    from tuneloop.api.finetunejob import CRD as FINETUNEJOB_CRD
    from tuneloop.api.finetuneschedule import CRD as FINETUNESCHEDULE_CRD
    from tuneloop.api.modeldeployment import CRD as MODELDEPLOYMENT_CRD

    return [FINETUNEJOB_CRD, MODELDEPLOYMENT_CRD, FINETUNESCHEDULE_CRD]


def command_operator(args: argparse.Namespace) -> int:
    """Run the operator (kopf) until stopped; handlers live in tuneloop.handlers."""
    import kopf
    from prometheus_client import start_http_server

    from tuneloop import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
                   verbose=args.verbose)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    settings = kopf.OperatorSettings()
    # Watching named namespaces needs no cluster-wide reads: kopf then neither lists namespaces
    # nor watches CustomResourceDefinitions, so namespaced Roles are all the operator is granted.
    settings.scanning.disabled = bool(args.namespace)
    kopf.run(
        settings=settings,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        # A peering name makes kopf's peering mandatory, and a standalone operator looks for no peering
        # object: with both it would wait for ever.
        peering_name=None if args.standalone else args.peering_name,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0




def add_parser(commands: argparse._SubParsersAction) -> None:
    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    operator.add_argument("--namespace", action="append", default=[],
                          help="watch only this namespace (repeatable); default: the whole cluster")
    operator.add_argument("--standalone", action="store_true",
                          help="no leader election (one replica); default: kopf peering elects one active replica")
    operator.add_argument("--peering-name", default="tuneloop", help="kopf peering object shared by the replicas")
    operator.add_argument("--priority", type=int, default=None,
                          help="peering priority of this replica (default: random, so that replicas differ and "
                               "exactly one is active: kopf pauses all but the highest)")
    operator.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    operator.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics (0: off)")
    operator.add_argument("--log-format", choices=("json", "text"), default="json")
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(handler=command_operator)

    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions (generated from the API models)")
    crds.set_defaults(handler=command_crds)
