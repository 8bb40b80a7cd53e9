"""Prometheus expositions parsed with prometheus_client's parser, for assertions."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """Parsed exposition: ``{(sample name, sorted label items): value}``."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Samples:
        values = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(values)

    def __bool__(self) -> bool:
        """False for an empty scrape (a failed one, see :func:`try_scrape`), so that a
        ``wait_for(lambda: condition(s := ...) and s)`` never settles on it."""
        return bool(self.values)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, items), value in self.values.items()
            if sample == name and wanted <= set(items)
        )

    def value(self, name: str, **labels: str) -> float:
        """One sample's value (0.0 if absent: children of unseen label values are not exported)."""
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {items: v for (sample, items), v in self.values.items() if sample == name}


def scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    response = client.get(path)
    response.raise_for_status()
    return Samples.parse(response.text)


def try_scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    """Like :func:`scrape`; a connection error (a worker just died) gives no samples."""
    try:
        return scrape(client, path)
    except httpx.TransportError:
        return Samples({})
