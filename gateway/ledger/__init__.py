"""The delivery ledger: exactly one job per delivery, no job without its completion event.

`records` holds what is recorded and the `Ledger` protocol; `sqlite` and `firestore` are the two
stores. This module picks one from GATEWAY_LEDGER and re-exports the records, so callers write
`from gateway.ledger import Delivery, Ledger, open_ledger`. The stores import only `records` and `slots`.
"""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError
from gateway.ledger.records import (
    CLAIMED,
    FINISHED,
    QUEUED,
    STATES,
    SUBMITTED,
    SUPERSEDED,
    TRACKED,
    Admitted,
    Claim,
    Delivery,
    DeliveryQuery,
    Ledger,
)
from gateway.ledger.slots import BUSY, QUEUE, REFUSE, REPLACE, RUN, WAIT, WHEN_BUSY, Line, Rule

__all__ = ["BUSY", "CLAIMED", "FINISHED", "QUEUE", "QUEUED", "REFUSE", "REPLACE", "RUN", "STATES", "SUBMITTED",
           "SUPERSEDED", "TRACKED", "WAIT", "WHEN_BUSY", "Admitted", "Claim", "Delivery", "DeliveryQuery", "Ledger",
           "Line", "Rule", "open_ledger"]


def open_ledger(url: str, *, project: str | None = None) -> Ledger:
    """The ledger named by GATEWAY_LEDGER: sqlite:///path or firestore://collection."""
    if url.startswith("sqlite:///"):
        from gateway.ledger.sqlite import SqliteLedger

        return SqliteLedger(Path(url[len("sqlite:///"):]))
    if url.startswith("firestore://"):
        from gateway.ledger.firestore import FirestoreLedger

        return FirestoreLedger.from_url(url, project=project)
    raise ConfigError(f"GATEWAY_LEDGER must be sqlite:///PATH or firestore://COLLECTION, got {url!r}")
