"""The ground floor: clock, concurrency limit, logging, signals. Imports nothing of ours."""
