"""Ollama's wire, pure: the pull stream's meaning, a run's progress, `/api/tags`. No aiohttp."""
