"""``sdtune serve``: the web page and REST API over the job queue, with the worker that runs it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

ORDER = 55


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but loopback needs a "
                             "token"),
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    workspace: Path = typer.Option(None, "--workspace", help="datasets, runs and the job queue (default: "
                                   "$SDTUNE_WORKSPACE, else ~/.local/share/sdtune)"),
    token: str = typer.Option(None, "--token", help="required on every request (default: $SDTUNE_TOKEN); "
                              "mandatory with a non-loopback --host"),
    address: str = typer.Option(None, "--address", help="Ray cluster to run jobs on (default: $RAY_ADDRESS, else a "
                                "local engine)"),
    slots: int = typer.Option(1, "--slots", min=1, help="jobs run at once"),
    worker: bool = typer.Option(True, "--worker/--no-worker", help="run the queue here (--no-worker: only the page "
                                "and API; `sdtune jobs work` runs the queue)"),
) -> None:
    """Serve the page (Datasets, New training, Jobs, Results) and the REST API at http://HOST:PORT.

    Jobs run while it is up; Ctrl-C stops the running ones at a checkpoint and keeps them queued, so the next
    `sdtune serve` (or `sdtune jobs work`) continues them. The CLI (`sdtune jobs ...`) sees the same queue.
    """
    import uvicorn

    from sdtune.jobs.workspace import find_workspace
    from sdtune.server.app import create_app
    from sdtune.server.security import is_loopback, server_token

    required = server_token(host, token)
    check_listen(host, port)  # before the worker starts jobs: a taken port is one line, not a served-then-dead page
    ws = find_workspace(workspace)
    app = create_app(ws, token=required, loopback=is_loopback(host))
    runner = None
    thread = None
    if worker:
        from sdtune.jobs.executor import engine_executor
        from sdtune.jobs.worker import Worker, WorkerLock

        pid = WorkerLock(ws).holder()
        if pid is not None:
            typer.echo(f"a worker already runs this workspace's jobs (pid {pid}): serving the page only", err=True)
        else:
            runner = Worker(ws, engine_executor(address), slots=slots, say=lambda s: typer.echo(s, err=True))
            thread = threading.Thread(target=runner.serve, name="sdtune-worker", daemon=True)
            thread.start()
    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    typer.echo(f"sdtune serve: {shown}{'?token=...' if required else ''}  (workspace {ws}; Ctrl-C stops)", err=True)
    try:
        # SSE streams never end by themselves: shut down after 3 s of grace
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    except SystemExit as exc:
        # uvicorn re-raises the SIGTERM/SIGINT it caught once it is down; Ray's driver handler turns that into
        # sys.exit(15): a requested stop, not a failure
        if exc.code not in (signal.SIGTERM, signal.SIGINT, 130, 143):
            raise
    finally:
        if runner is not None and thread is not None:
            typer.echo("stopping the running jobs at a checkpoint (they stay queued)...", err=True)
            runner.stop_event.set()
            thread.join()


def check_listen(host: str, port: int) -> None:
    """Raise SdtuneError in one line when the server could not listen on ``host:port`` (taken by another program
    or another ``sdtune serve``, a privileged port, an address this machine does not have). Bound and released
    with SO_REUSEADDR, as uvicorn binds, so a port in TIME_WAIT after a restart counts as free."""
    import errno
    import socket

    from sdtune.errors import SdtuneError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SdtuneError(f"--host {host}: not an address of this machine ({exc.strerror}); e.g. 127.0.0.1") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            why = {errno.EADDRINUSE: "the port is in use (another `sdtune serve`, or another program)",
                   errno.EACCES: "permission denied (ports below 1024 need root)",
                   errno.EADDRNOTAVAIL: "this machine has no such address"}.get(exc.errno or 0, exc.strerror)
            raise SdtuneError(f"cannot listen on {host}:{port}: {why}; choose another with --port"
                              + (" or --host" if exc.errno == errno.EADDRNOTAVAIL else "")) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
