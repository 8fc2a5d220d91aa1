"""Process assembly: settings, the aiohttp app, CLI, admin API, middleware, embedded engines."""
