"""The route table: every configured route, built once from the configuration and replaced whole
on reload. Every part that needs a route (the ingest path, the policy, the router, the
subscriptions) reads it from the one :class:`CurrentRoutes` the gateway holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from adapters.base import TargetConfig
from gateway.config import RouteConfig
from gateway.store_types import target_key


@dataclass(frozen=True)
class RouteTable:
    """The routes of one configuration, by name, in configuration order."""

    routes: tuple[RouteConfig, ...] = ()
    _by_name: Mapping[str, RouteConfig] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {route.name: route for route in self.routes})

    def get(self, name: str) -> RouteConfig | None:
        """The route called ``name``, or None."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[RouteConfig]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    def names(self) -> list[str]:
        """Route names in configuration order."""
        return [route.name for route in self.routes]

    def targets(self) -> Iterator[tuple[RouteConfig, str, TargetConfig]]:
        """Every (route, target key, target) of every route."""
        for route in self.routes:
            for index, target in enumerate(route.deliver):
                yield route, target_key(index, target), target


class CurrentRoutes:
    """The route table in force; :meth:`replace` swaps it whole (SIGHUP)."""

    def __init__(self, table: RouteTable) -> None:
        self._table = table

    @property
    def table(self) -> RouteTable:
        """The table in force now."""
        return self._table

    def replace(self, table: RouteTable) -> None:
        """Put a reloaded configuration's table in force."""
        self._table = table
