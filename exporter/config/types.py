"""The config as the program sees it: frozen, typed objects, and every default, each once.

The loader (`exporter.config.loader`) builds these from YAML; everything else only reads them.
A default lives here and nowhere else: the loader, the run history and the tests read it from
here, so the documented default and the one in force cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.config.windows import Window

DEFAULT_INVENTORY_INTERVAL: Final = 60.0
"""Seconds between two `GET /api/tags` of a server (`inventory_interval`)."""
DEFAULT_HISTORY_LIMIT: Final = 100
"""Finished runs kept per pair (`history_limit`)."""
DEFAULT_FILE_REFRESH_INTERVAL: Final = 5.0
"""Seconds between two reads of a `server_discovery` file."""
DEFAULT_DNS_REFRESH_INTERVAL: Final = 30.0
"""Seconds between two lookups of a `server_discovery` DNS name."""
DEFAULT_DNS_TYPE: Final = "SRV"
DEFAULT_DISCOVERY_SCHEME: Final = "http"
"""The scheme of the URLs a DNS answer becomes."""
DEFAULT_MAX_SERVERS: Final = 256
"""Servers one discovery entry takes at most: with a model each about 16,000 series and at most
512 pull sockets, under the common limit of 1,024 open files."""
MAX_MAX_SERVERS: Final = 100_000
"""The largest `max_servers` a config may set."""
DEFAULT_FORGET_AFTER: Final = 3600.0
"""Seconds a departed discovered server's run history is kept: a pod that restarts under the
same name gets its runs back."""


class Mode(StrEnum):
    """What a model's schedule does; the values are the config's and the API's `mode` values."""

    PULL = "pull"
    """Scheduled pulls."""
    CHECK = "check"
    """Ask the registry whether an update waits; never download."""


@dataclass(frozen=True, slots=True)
class PullSettings:
    """The `defaults` keys, resolved for one model (durations in seconds).

    The field defaults are the built-in defaults: `PullSettings()` is what a config that sets
    nothing gets.
    """

    interval: float = 6 * 3600.0
    jitter: float = 0.1
    timeout: float = 2 * 3600.0
    stall_timeout: float = 600.0
    insecure: bool = False
    run_on_start: bool = True
    mode: Mode = Mode.PULL
    window: Window | None = None
    """Scheduled pulls start only inside it; None: any time."""


DEFAULT_SETTINGS: Final = PullSettings()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One model to pull; `name` is exactly as configured, since it is a label value."""

    name: str
    settings: PullSettings


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One Ollama server; `headers` are secrets and stay out of `repr`."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    max_concurrent_pulls: int
    models: tuple[ModelConfig, ...]
    inventory_interval: float = DEFAULT_INVENTORY_INTERVAL
    """Seconds between two `GET /api/tags`; 0 disables the inventory."""


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """One `server_discovery` entry: where servers come from, and the `template` they get.

    Exactly one of `file` and `dns` is set; `template` is a server without name and url.
    """

    name: str
    """`ollama_pull_exporter_discovered_servers{discovery=...}`: its `name`, else its index."""
    template: ServerConfig
    file: str | None = None
    """Path of a YAML/JSON list of {name, url}; relative paths are relative to the config."""
    dns: str | None = None
    type: str = DEFAULT_DNS_TYPE
    """`A`, `AAAA` or `SRV` (DNS only)."""
    port: int | None = None
    """The port of every answer of an A/AAAA lookup."""
    refresh_interval: float = DEFAULT_DNS_REFRESH_INTERVAL
    nameserver: tuple[str, int] | None = field(default=None, compare=True)
    """`HOST:PORT` to ask instead of the system's resolver."""
    scheme: str = DEFAULT_DISCOVERY_SCHEME
    max_servers: int = DEFAULT_MAX_SERVERS
    """Servers taken from one answer at most (the first in name order); the rest are dropped."""
    forget_after: float = DEFAULT_FORGET_AFTER
    """Seconds a departed server's run history is kept, in case it comes back."""


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid config file."""

    source: str
    servers: tuple[ServerConfig, ...]
    max_concurrent_pulls: int | None = None
    """Pulls at once across all servers; None: no fleet-wide limit."""
    discovery: tuple[DiscoveryConfig, ...] = ()
    """`server_discovery` entries; the servers they find join `servers` at run time."""
    history_limit: int = DEFAULT_HISTORY_LIMIT
    """Finished runs kept per pair, with their transcripts (the operator's API and page)."""

    @property
    def model_count(self) -> int:
        """Number of (server, model) pairs."""
        return sum(len(server.models) for server in self.servers)
