r"""The contract every controller follows: reconcile(resource, observed, now) -> Decision.

    object --read()--> Resource (parsed once) --runtime.observe()--> Observed
        --reconcile(resource, observed, now)--> Decision(status, actions, events, requeue_after)
        --runtime.act()--> the world changes; the Events are posted; the status is written

A reconciler is a pure function: the runtime of its kind (runtime/<kind>.py) observes the world
and carries out the actions. `requeue_after` is when the reconciler wants to look again (a rollout
step that comes due, a schedule's next slot): the next pass runs then, or at the resync interval
if that is sooner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Literal, TypeVar

from tuneloop.api.common import Condition, SpecError, WireModel, remove_condition, set_condition, validated

MIN_REQUEUE_SECONDS = 1.0
META_FIELDS = ("name", "namespace", "uid", "generation")

ObjectT = TypeVar("ObjectT", bound=WireModel)
StatusT = TypeVar("StatusT", bound=WireModel)
ActionT = TypeVar("ActionT")


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Resource(Generic[ObjectT, StatusT]):
    """One object as a pass sees it: typed once, with its status as stored."""

    kind: str
    name: str
    namespace: str
    status: StatusT
    object: ObjectT | None  # None when the spec is invalid: spec_error says why
    spec_error: SpecError | None = None
    uid: str | None = None
    generation: int | None = None
    created: str | None = None  # metadata.creationTimestamp
    annotations: Mapping[str, str] = field(default_factory=dict)
    stored_status: Mapping[str, Any] = field(default_factory=dict)  # our status fields, as stored

    @property
    def spec(self) -> Any:
        return None if self.object is None else self.object.spec  # type: ignore[attr-defined]


@dataclass
class Decision(Generic[StatusT, ActionT]):
    status: StatusT
    actions: list[ActionT] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; None: at the resync interval

    def act(self, *actions: ActionT) -> None:
        self.actions.extend(actions)

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(EmitEvent(type, reason, message))

    def wake_in(self, seconds: float) -> None:
        """Ask for the next pass in `seconds` (the soonest of all the asks wins)."""
        seconds = max(seconds, MIN_REQUEUE_SECONDS)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


Readiness = Literal["Ready", "Reconciling", "Stalled"]


def with_readiness(conditions: list[Condition], readiness: Readiness, reason: str, message: str, *,
                   generation: int | None, now: str) -> list[Condition]:
    """The kstatus conditions (sigs.k8s.io/cli-utils kstatus, which Flux and `kubectl wait` read):
    Ready True only when the object is done and good; otherwise Ready False with the same reason as
    Reconciling (work goes on) or Stalled (it cannot go on without a change: kstatus reads Failed).
    Reconciling and Stalled are abnormal-true: dropped when they do not hold."""
    conditions = set_condition(conditions, "Ready", "True" if readiness == "Ready" else "False", reason, message,
                               observed_generation=generation, now=now)
    for kind in ("Reconciling", "Stalled"):
        if readiness == kind:
            conditions = set_condition(conditions, kind, "True", reason, message,
                                       observed_generation=generation, now=now)
        else:
            conditions = remove_condition(conditions, kind)
    return conditions


@cache
def status_fields(status_model: type[WireModel]) -> frozenset[str]:
    """The wire names of a status model: kopf keeps its own bookkeeping in status too."""
    return frozenset(info.alias or name for name, info in status_model.model_fields.items())


def read(model: type[ObjectT], status_model: type[StatusT], body: Mapping[str, Any]) -> Resource[ObjectT, StatusT]:
    """The object as its model, parsed once; an invalid spec is kept as the SpecError naming every problem."""
    meta = body.get("metadata") or {}
    stored = {key: value for key, value in (body.get("status") or {}).items() if key in status_fields(status_model)}
    try:
        obj, error = validated(model, {
            "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {key: meta[key] for key in META_FIELDS if meta.get(key) is not None},
            "spec": dict(body.get("spec") or {})}, ""), None
    except SpecError as problem:
        obj, error = None, problem
    return Resource(kind=body.get("kind") or "", name=meta["name"], namespace=meta.get("namespace") or "default",
                    status=status_model.model_validate(stored), object=obj, spec_error=error, uid=meta.get("uid"),
                    generation=meta.get("generation"), created=meta.get("creationTimestamp"),
                    annotations=dict(meta.get("annotations") or {}), stored_status=stored)


def resource_of(obj: ObjectT, status: StatusT) -> Resource[ObjectT, StatusT]:
    """An object parsed already (a local run's manifest) as a pass sees it."""
    meta = obj.metadata  # type: ignore[attr-defined]
    return Resource(kind=obj.kind, name=meta.name, namespace=meta.namespace, status=status, object=obj,  # type: ignore[attr-defined]
                    uid=meta.uid,
                    generation=meta.generation, annotations=dict(meta.annotations))
