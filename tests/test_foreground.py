"""ScrapeGate: background loops wait while a scrape is being built."""

from __future__ import annotations

import threading
import time

from exporter import foreground
from exporter.foreground import ScrapeGate


def test_give_way_without_scrape_returns():
    gate = ScrapeGate()
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (gate.give_way(), returned.set()))
    waiter.start()
    waiter.join(timeout=5)
    assert returned.is_set()


def test_give_way_waits_for_last_scrape(monkeypatch):
    monkeypatch.setattr(foreground, "GIVE_WAY_SECONDS", 10.0)
    gate = ScrapeGate()
    released = threading.Event()
    seen_at_return = []
    waiter = threading.Thread(target=lambda: (gate.give_way(), seen_at_return.append(released.is_set())))
    with gate.scraping():
        with gate.scraping():
            waiter.start()
        time.sleep(0.05)  # the outer scrape still runs
        assert seen_at_return == []
        released.set()
    waiter.join(timeout=5)
    assert seen_at_return == [True]


def test_give_way_is_bounded(monkeypatch):
    monkeypatch.setattr(foreground, "GIVE_WAY_SECONDS", 0.01)
    gate = ScrapeGate()
    returned = threading.Event()
    with gate.scraping():
        waiter = threading.Thread(target=lambda: (gate.give_way(), returned.set()))
        waiter.start()
        waiter.join(timeout=5)
        assert returned.is_set()
