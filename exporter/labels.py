"""Bounded topology label values."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

OTHER = "_other"

# Storm topology ids are a name, a counter and an epoch; argv can still carry one of
# 128 KiB. Longer values keep their head and their distinguishing tail.
MAX_LABEL_LENGTH = 256
_HEAD, _TAIL = 200, 40


def bound_length(value: str) -> str:
    """Shorten ``value`` to at most MAX_LABEL_LENGTH characters, marking the cut."""
    if len(value) <= MAX_LABEL_LENGTH:
        return value
    return f"{value[:_HEAD]}...{value[-_TAIL:]}"


class TopologyLabels:
    """Admit topology ids as label values up to a maximum, and expire idle ones.

    Past ``maximum`` distinct topologies, new ones share the label value
    ``_other``. A topology with no live worker and no activity for ``retention``
    seconds is expired: its series disappear and its slot is free again, so the
    series of a node stay bounded however many topologies come and go.
    """

    def __init__(self, maximum: int, retention: float) -> None:
        self.maximum = maximum
        self.retention = retention
        self.last_active: dict[str, float] = {}
        self.overflowed = 0  # workers whose topology was put under _other

    def admit(self, topology: str, now: float) -> str:
        """Return the label value for ``topology``, admitting it when there is room."""
        topology = bound_length(topology)
        if topology in self.last_active:
            self.last_active[topology] = now
            return topology
        if len([t for t in self.last_active if t != OTHER]) < self.maximum:
            self.last_active[topology] = now
            return topology
        self.overflowed += 1
        self.last_active[OTHER] = now
        if self.overflowed == 1 or self.overflowed % 1000 == 0:
            logger.warning(
                "More than %d topologies on this node; topology=%r and later ones are "
                "exported as %s (%d workers so far); raise --topology.max to see them",
                self.maximum, topology, OTHER, self.overflowed,
            )
        return OTHER

    def touch(self, label: str, now: float) -> None:
        if label in self.last_active:
            self.last_active[label] = now

    def expire(self, now: float, active: set[str]) -> list[str]:
        """Forget labels idle for longer than the retention; return them."""
        expired = [
            label
            for label, seen in self.last_active.items()
            if label not in active and now - seen > self.retention
        ]
        for label in expired:
            del self.last_active[label]
        return expired
