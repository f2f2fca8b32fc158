"""Who may talk to `sdtune serve`: loopback by default, a token for anything else, same-origin for changes.

Rules (issue 22):

- Bound to a loopback address (127.0.0.1, ::1, localhost) the server needs no token, but only answers requests
  whose ``Host`` is a loopback name (a web page on another site cannot reach it by DNS rebinding).
- Bound to any other address it refuses to start without a token (``--token`` or ``SDTUNE_TOKEN``), and every
  request must carry it: ``Authorization: Bearer TOKEN``, the ``sdtune_token`` cookie (set when the page is
  opened once as ``/?token=TOKEN``), or ``?token=`` on a URL (images and the event stream, which cannot set
  headers).
- A request that changes state (POST, PUT, PATCH, DELETE) also needs the token or a same-origin header
  (``Origin`` equal to the server's own origin, or ``Sec-Fetch-Site: same-origin``): a form on another site
  cannot queue a job in the user's browser.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass

from sdtune.engine.loopback import is_loopback
from sdtune.errors import SdtuneError

TOKEN_ENV = "SDTUNE_TOKEN"
COOKIE = "sdtune_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


def server_token(host: str, token: str | None) -> str | None:
    """The token the server will require: ``token`` / ``$SDTUNE_TOKEN``; refused on a non-loopback host without."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise SdtuneError("the token must be at least 16 characters (e.g. `python -c \"import secrets; "
                          "print(secrets.token_urlsafe(24))\"`)")
    if token is None and not is_loopback(host):
        raise SdtuneError(f"--host {host} lets other machines reach the server: give a token with --token or "
                          f"{TOKEN_ENV} (e.g. {secrets.token_urlsafe(24)}), or keep the default 127.0.0.1")
    return token


@dataclass
class Verdict:
    ok: bool
    status: int = 200
    message: str = ""


@dataclass
class Guard:
    """Decides each request (see the module docstring). ``loopback``: the server is bound to a loopback address."""

    token: str | None
    loopback: bool

    def _has_token(self, headers, cookies, query) -> bool:
        if self.token is None:
            return False
        given = [query.get("token", ""), cookies.get(COOKIE, "")]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        return any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)

    def check(self, method: str, headers, cookies, query, scheme: str) -> Verdict:
        host = headers.get("host", "")
        host_name = host.rsplit(":", 1)[0] if host.count(":") <= 1 else host.rsplit("]:", 1)[0] + "]"
        if self.loopback and host_name.lower() not in LOOPBACK_NAMES:
            return Verdict(False, 403, f"host {host!r} refused: this server answers only on loopback addresses")
        has_token = self._has_token(headers, cookies, query)
        if self.token is not None and not has_token:
            return Verdict(False, 401, "a token is required: open the page as /?token=TOKEN or send "
                                       "'Authorization: Bearer TOKEN'")
        if method.upper() in CHANGES and not has_token:
            origin = headers.get("origin")
            same = headers.get("sec-fetch-site") == "same-origin" or origin == f"{scheme}://{host}"
            if not same:
                return Verdict(False, 403, "a request that changes something needs the token or a same-origin "
                                           "header (Origin of this server): refused")
        return Verdict(True)
