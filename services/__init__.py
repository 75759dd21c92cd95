"""ASX trading services: lightweight asyncio daemons for signals and paper trading."""
