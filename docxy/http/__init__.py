"""The HTTP surface: the app, its routes and responses, the ASGI layers and the server."""
