"""`tuneloop rollout status NAME --watch`: the two colours and the analysis as a tree, refreshed until
the rollout ends (or Ctrl-C). Colours on a terminal (rich); plain text, one block per change, without one."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tuneloop.runtime.rollout_control import RolloutView

COLOURS = ("blue", "green")
SETTLED_PHASES = ("Healthy", "Degraded", "Aborted")
STYLE = {"blue": "bold blue", "green": "bold green", "ok": "green", "bad": "red", "wait": "yellow", "": ""}


@dataclass(frozen=True)
class Line:
    depth: int
    text: str
    style: str = ""  # a key of STYLE


def settled(view: RolloutView) -> bool:
    """Nothing left to watch: no rollout under way (a Paused one waits for `tuneloop rollout promote`)."""
    status = view.md.get("status") or {}
    return status.get("phase") in SETTLED_PHASES and not status.get("rollout")


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def traffic(view: RolloutView, colour: str) -> str:
    status = view.md.get("status") or {}
    selected = {role: ((service or {}).get("spec") or {}).get("selector", {}).get("tuneloop.dev/colour")
                for role, service in view.services.items()}
    active = selected.get("active") or status.get("activeSelector")
    preview = selected.get("preview") or status.get("previewSelector")
    if active == colour:
        return "100% of the traffic (active Service)"
    if preview == colour:
        return "0% (preview Service: the analysis only)"
    return "0%"


def tree(view: RolloutView) -> list[Line]:
    meta, status = view.md["metadata"], view.md.get("status") or {}
    phase = status.get("phase", "Pending")
    phase_style = {"Healthy": "ok", "Degraded": "bad", "Aborted": "bad"}.get(phase, "wait")
    lines = [Line(0, f"ModelDeployment {meta.get('namespace', 'default')}/{meta['name']}: {phase}", phase_style)]
    if status.get("message"):
        lines.append(Line(1, status["message"]))
    revisions = {revision["colour"]: (role, revision) for role in ("active", "preview")
                 if (revision := status.get(role))}
    for colour in COLOURS:
        deployment = next((d for d in view.deployments
                           if (d["metadata"].get("labels") or {}).get("tuneloop.dev/colour") == colour), None)
        role, revision = revisions.get(colour, ("idle", {}))
        if deployment is None and not revision:
            continue
        version = revision.get("adapterVersion") or "-"
        score = f", score {revision['score']}" if revision.get("score") is not None else ""
        lines.append(Line(1, f"{colour} ({role}): adapter version {version}, revision "
                             f"{revision.get('revision', '-')}{score}", colour))
        if deployment is not None:
            desired = (deployment.get("spec") or {}).get("replicas", 0)
            ready = (deployment.get("status") or {}).get("readyReplicas", 0)
            lines.append(Line(2, f"replicas {ready}/{desired} ready", "ok" if desired and ready >= desired else "wait"))
        lines.append(Line(2, f"traffic {traffic(view, colour)}"))
        for pod in sorted((p for p in view.pods if (p["metadata"].get("labels") or {}).get("tuneloop.dev/colour")
                           == colour), key=lambda p: p["metadata"]["name"]):
            pod_phase = (pod.get("status") or {}).get("phase", "Pending")
            ready = pod_ready(pod)
            lines.append(Line(2, f"pod {pod['metadata']['name']}: {pod_phase}, {'ready' if ready else 'not ready'}",
                              "ok" if ready else "bad" if pod_phase == "Failed" else "wait"))
    lines += analysis(view)
    return lines


def analysis(view: RolloutView) -> list[Line]:
    status = view.md.get("status") or {}
    strategy = ((view.md.get("spec") or {}).get("strategy") or {}).get("blueGreen") or {}
    rollout, history = status.get("rollout"), status.get("history") or []
    lines = [Line(1, "analysis")]
    if rollout:
        lines.append(Line(2, f"step {rollout['step']} since {rollout['since']}", "wait"))
    spec = strategy.get("prePromotionAnalysis")
    if spec:
        checks = [f"{len(spec.get('smokePrompts') or [])} smoke prompts", f"{spec.get('requests', 20)} requests",
                  f"error rate <= {spec.get('maxErrorRate', 0)}"]
        if spec.get("maxP95LatencyMs") is not None:
            checks.append(f"p95 latency <= {spec['maxP95LatencyMs']} ms")
        if spec.get("minJudgeScore") is not None:
            checks.append(f"judge score >= {spec['minJudgeScore']}")
        lines.append(Line(2, "checks " + ", ".join(checks)))
    else:
        lines.append(Line(2, "checks none configured (readiness is enough)"))
    if rollout:
        verdict, style = ("running", "wait") if rollout["step"] in ("Preview", "Analysis") else ("passed", "ok")
    elif history:
        last = history[-1]
        passed = last["outcome"] == "Promoted"
        verdict, style = (f"{last['outcome']} (revision {last['revision']}): {last['reason']}", "ok" if passed else "bad")
    else:
        verdict, style = "none yet", ""
    lines.append(Line(2, f"verdict {verdict}", style))
    return lines


def plain(lines: list[Line]) -> str:
    return "\n".join("  " * line.depth + line.text for line in lines)


def rich_tree(lines: list[Line]) -> Any:
    from rich.text import Text
    from rich.tree import Tree

    root = Tree(Text(lines[0].text, style=STYLE[lines[0].style]))
    parents = {0: root}
    for line in lines[1:]:
        parents[line.depth] = parents[line.depth - 1].add(Text(line.text, style=STYLE[line.style]))
    return root


def watch(name: str, namespace: str | None, interval: float = 2.0) -> int:
    """Show the rollout until it settles or Ctrl-C: a live tree on a terminal, else a block per change."""
    import asyncio
    from contextlib import ExitStack

    from tuneloop.runtime.rollout_control import watch as watch_views

    shown: list[str] = []

    def show_plain(view: RolloutView) -> bool:
        text = plain(tree(view))
        if not shown or text != shown[-1]:
            print(f"--- {datetime.now():%H:%M:%S}\n{text}", flush=True)
            shown[:] = [text]
        return not settled(view)

    def show_live(view: RolloutView) -> bool:
        live.update(rich_tree(tree(view)), refresh=True)
        return not settled(view)

    with ExitStack() as stack:
        show = show_plain
        if sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live

            live = stack.enter_context(Live(console=Console(), auto_refresh=False))
            show = show_live
        try:
            asyncio.run(watch_views(name, namespace, show, interval))
        except KeyboardInterrupt:
            return 130
    return 0
