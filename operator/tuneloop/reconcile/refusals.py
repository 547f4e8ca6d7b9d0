"""What the operator refuses to do for an object whatever its spec says: the runtime finds these
(runtime/secrets.py, outbound.py) and the reconcilers turn them into a named reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Refusal:
    reason: Literal["SecretNotAllowed", "AddressNotAllowed"]
    message: str


def summary(refusals: tuple[Refusal, ...]) -> str:
    return "; ".join(refusal.message for refusal in refusals)
