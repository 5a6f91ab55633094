"""Fault and latency injection for the EC2 emulator, changeable while it runs.

Configured from Python (``emu.faults``) or over HTTP (``POST {endpoint}/vpccni-sim/faults`` with
the JSON accepted by :meth:`FaultConfig.apply`), so a daemon in another process can be put under
throttling or slow attachments mid-test. Randomness comes from one seedable generator so a test can
replay the exact same sequence of throttled calls.
"""

from __future__ import annotations

import random
import threading
from typing import Any

ANY_ACTION = "*"


class FaultConfig:
    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._throttle: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._attach_delay = 0.0

    # -- configuration ---------------------------------------------------------------------
    def set_throttle(self, action: str, rate: float) -> None:
        """Answer ``rate`` (0..1) of calls to ``action`` ("*" = all) with RequestLimitExceeded."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"throttle rate must be within 0..1, got {rate}")
        with self._lock:
            self._throttle[action] = rate

    def set_latency(self, action: str, seconds: float) -> None:
        """Delay every call to ``action`` ("*" = every action) by ``seconds`` before it runs."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        with self._lock:
            self._latency[action] = seconds

    def set_attach_delay(self, seconds: float) -> None:
        """Keep new attachments in ``attaching`` for ``seconds`` before they become ``attached``."""
        if seconds < 0:
            raise ValueError(f"attach delay must be >= 0, got {seconds}")
        with self._lock:
            self._attach_delay = seconds

    def seed(self, seed: int) -> None:
        with self._lock:
            self._rng.seed(seed)

    def clear(self) -> None:
        with self._lock:
            self._throttle.clear()
            self._latency.clear()
            self._attach_delay = 0.0

    def apply(self, doc: dict[str, Any]) -> None:
        """Apply a JSON document: ``{"clear": bool, "seed": int, "throttle": {action: rate},
        "latency": {action: seconds}, "attach_delay": seconds}``; every key optional."""
        known = {"clear", "seed", "throttle", "latency", "attach_delay"}
        unknown = set(doc) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        if doc.get("clear"):
            self.clear()
        if "seed" in doc:
            self.seed(int(doc["seed"]))
        for action, rate in dict(doc.get("throttle", {})).items():
            self.set_throttle(str(action), float(rate))
        for action, seconds in dict(doc.get("latency", {})).items():
            self.set_latency(str(action), float(seconds))
        if "attach_delay" in doc:
            self.set_attach_delay(float(doc["attach_delay"]))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "throttle": dict(self._throttle),
                "latency": dict(self._latency),
                "attach_delay": self._attach_delay,
            }

    # -- queries used by the request path --------------------------------------------------
    def latency_for(self, action: str) -> float:
        with self._lock:
            return self._latency.get(action, self._latency.get(ANY_ACTION, 0.0))

    def should_throttle(self, action: str) -> bool:
        with self._lock:
            rate = self._throttle.get(action, self._throttle.get(ANY_ACTION, 0.0))
            if rate <= 0.0:
                return False
            return rate >= 1.0 or self._rng.random() < rate

    @property
    def attach_delay(self) -> float:
        with self._lock:
            return self._attach_delay
