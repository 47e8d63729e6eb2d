"""The HTTP clients: pull, probe, inventory and the registry check (aiohttp)."""
