"""The `sdtune serve` application: the page (static files shipped in the package) and the REST API under /api.

The API only translates: a request becomes a job in the store (``sdtune.jobs``), a call of the library the CLI
calls, or a read of a run folder. The worker that runs the queue is started by `sdtune serve` (commands/serve.py),
not here, so tests can build the app on a workspace alone.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdtune.errors import SdtuneError
from sdtune.jobs.store import JobError, JobStore
from sdtune.jobs.workspace import OutsideWorkspace
from sdtune.server.security import COOKIE, Guard

STATIC = Path(__file__).parent / "static"


def create_app(workspace: Path, *, token: str | None = None, loopback: bool = True) -> FastAPI:
    """The app for ``workspace`` (created if missing). ``token``: required on every request when set."""
    from sdtune.jobs.workspace import find_workspace
    from sdtune.server import datasets_api, jobs_api, results_api

    workspace = find_workspace(workspace)
    app = FastAPI(title="sdtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace = workspace
    app.state.store = JobStore.in_workspace(workspace)
    app.state.guard = Guard(token, loopback)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        verdict = app.state.guard.check(request.method, request.headers, request.cookies, request.query_params,
                                        request.url.scheme)
        if not verdict.ok:
            return JSONResponse({"error": verdict.message}, status_code=verdict.status)
        response = await call_next(request)
        given = request.query_params.get("token")
        if token and given == token and request.cookies.get(COOKIE) != token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError):
        return JSONResponse(request_error(exc.errors()), status_code=422)

    @app.exception_handler(OutsideWorkspace)
    async def outside(_: Request, exc: OutsideWorkspace):
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.exception_handler(JobError)
    async def job_error(_: Request, exc: JobError):
        return JSONResponse({"error": str(exc)}, status_code=404 if str(exc).startswith("no job") else 409)

    @app.exception_handler(SdtuneError)
    async def user_error(_: Request, exc: SdtuneError):
        fields = getattr(exc, "fields", None)
        return JSONResponse({"error": str(exc), **({"fields": fields} if fields else {})}, status_code=400)

    app.include_router(jobs_api.router, prefix="/api")
    app.include_router(datasets_api.router, prefix="/api")
    app.include_router(results_api.router, prefix="/api")

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def request_error(errors) -> dict:
    """A malformed request (not JSON, a field of the wrong type or missing) in the API's one error shape,
    ``{"error": "one line", "fields": {name: why}}``, as every other refusal: FastAPI's own ``{"detail": [...]}``
    reached the page as "Unprocessable Entity" and a script as a second shape to parse."""
    fields: dict[str, str] = {}
    for err in errors:
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        invalid_json = err.get("type") == "json_invalid"
        name = "body" if invalid_json or not loc else ".".join(loc)
        why = "not valid JSON" if invalid_json else str(err.get("msg", "invalid"))
        fields.setdefault(name, why[:1].lower() + why[1:])
    line = "; ".join(f"{name}: {why}" for name, why in fields.items())
    return {"error": f"bad request: {line}", "fields": fields}
