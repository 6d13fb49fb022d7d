"""A registry error sent straight through ASGI, by the layers that answer before the app does
(admission, framing, the plain-HTTP guard): the error's own body and headers
(:meth:`RegistryError.encoded`, :meth:`RegistryError.headers`), its length, and what the layer
adds (the API version, ``Connection: close``, a ``Location``)."""

from __future__ import annotations

from collections.abc import Iterable

from hypercorn.typing import ASGISendCallable

from docxy.core.errors import RegistryError


async def send_error(
    send: ASGISendCallable, error: RegistryError, extra: Iterable[tuple[str, str]] = ()
) -> None:
    body = error.encoded()
    named = [*error.headers(), ("Content-Length", str(len(body))), *extra]
    headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in named]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
