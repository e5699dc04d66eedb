"""The kiosk: its HTTP server (aiohttp) and page, the server's limits, field collection, review/teach/apply
(the field loop) and ``/metrics``."""
