"""The aiohttp application of ``automation serve`` (``app``): one module per concern behind it."""
