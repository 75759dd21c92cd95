"""The scheduler service: ASX-aware task scheduling with dependencies, retries and a stored history."""
