"""`launch ui`: a read-only web app over a runs directory (Starlette, served by uvicorn).

    /                     the runs            /api/runs                 the same, as JSON
    /run/JOB/RUN_ID       one run's page      /api/run/JOB/RUN_ID       the same, as JSON
    /static/...           app.js, app.css and Plotly's offline build

Only GET and HEAD. On a loopback address (the default) the Host header must be a loopback name,
so a web page in the user's browser cannot reach it by DNS rebinding; elsewhere a token is
required (`--token`), taken from `?token=`, an `Authorization: Bearer` header or the cookie the
first tokened request sets.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from launcher.errors import LaunchError
from launcher.rundir import RunDir
from launcher.ui import model
from launcher.ui.page import SERVED_CSP, STATIC, plotly_js, served_page

COOKIE = "launch_ui_token"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenGate:
    """Every request carries the token (query, bearer header or cookie), compared in constant time;
    a valid `?token=` sets the cookie so the page's own requests need not repeat it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        candidates = [given, header.removeprefix("Bearer ") if header.startswith("Bearer ") else None,
                      request.cookies.get(COOKIE)]
        if not any(c is not None and secrets.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            await PlainTextResponse("launch ui: a token is required (open the URL `launch ui` printed)",
                                    status_code=401)(scope, receive, send)
            return
        if given is None or not secrets.compare_digest(given.encode(), self.token.encode()):
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={quote(self.token)}; Path=/; HttpOnly; SameSite=Strict"
                message.setdefault("headers", []).append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = SERVED_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def make_app(runs_dir: Path, token: str | None, loopback: bool) -> Starlette:
    """The app over `runs_dir`; `token` guards every request; `loopback` checks the Host header."""
    runs_dir = Path(runs_dir)

    def find(request: Request) -> RunDir | None:
        job, run_id = request.path_params["job"], request.path_params["run_id"]
        path = runs_dir / job / run_id
        # the two names come from the URL (a path parameter never holds "/"): only a run directory
        # right under runs_dir is served
        if job in ("..", ".") or run_id in ("..", "."):
            return None
        return RunDir(path) if (path / "config.toml").is_file() else None

    async def runs_page(request: Request) -> Response:
        return _secure(HTMLResponse(served_page("runs", "launch · runs", model.runs_table(runs_dir), "/api/runs")))

    async def runs_json(request: Request) -> Response:
        return _secure(JSONResponse(model.runs_table(runs_dir)))

    async def run_page(request: Request) -> Response:
        run = find(request)
        if run is None:
            return _secure(PlainTextResponse("no such run", status_code=404))
        ref = f"{quote(run.job_name)}/{quote(run.run_id)}"
        return _secure(HTMLResponse(served_page("run", f"launch · {run.job_name} / {run.run_id}", model.run_page(run),
                                                f"/api/run/{ref}")))

    async def run_json(request: Request) -> Response:
        run = find(request)
        if run is None:
            return _secure(JSONResponse({"error": "no such run"}, status_code=404))
        return _secure(JSONResponse(model.run_page(run)))

    files = {"app.js": STATIC / "app.js", "app.css": STATIC / "app.css", "plotly.min.js": plotly_js()}

    async def static(request: Request) -> Response:
        path = files.get(request.path_params["name"])
        if path is None:
            return _secure(PlainTextResponse("not found", status_code=404))
        return _secure(FileResponse(path))

    routes = [
        Route("/", runs_page), Route("/api/runs", runs_json),
        Route("/run/{job}/{run_id}", run_page), Route("/api/run/{job}/{run_id}", run_json),
        Route("/static/{name}", static),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)] if loopback and not token else []
    if token:
        middleware.append(Middleware(TokenGate, token=token))
    return Starlette(routes=routes, middleware=middleware)


def serve(runs_dir: Path, host: str, port: int, token: str | None) -> None:
    """Serve until interrupted; refuses a non-loopback address without a token (one line)."""
    import uvicorn

    loopback = is_loopback(host)
    if not loopback and not token:
        raise LaunchError(f"launch ui --host {host}: other machines could read every run; give --token "
                          "(a secret every request must carry), or keep the default 127.0.0.1 and tunnel to it")
    if not Path(runs_dir).is_dir():
        raise LaunchError(f"launch ui: {runs_dir}: no such directory (give --runs-dir)")
    shown = "localhost" if loopback else host
    url = f"http://{shown}:{port}/" + (f"?token={quote(token)}" if token else "")
    print(f"launch ui: serving {runs_dir} at {url}", flush=True)
    if loopback:
        print(f"  from your machine: ssh -N -L {port}:localhost:{port} LOGIN_NODE, then open {url}", flush=True)
    uvicorn.run(make_app(runs_dir, token, loopback), host=host, port=port, log_level="warning", access_log=False)
