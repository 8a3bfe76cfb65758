"""`qrtrain serve`: the root's lock, the API token decision, then uvicorn.

    qrtrain serve                                   # 127.0.0.1:8765, no token needed (QRTRAIN_API_TOKEN: required)
    QRTRAIN_API_TOKEN=secret qrtrain serve --host 0.0.0.0 --workers 2
    qrtrain serve --trust-proxy 127.0.0.1           # behind a reverse proxy: its X-Forwarded-For is believed

One service per artifact root: a second `qrtrain serve` on the same --root refuses to start (exit 2), so
no two job loops ever share a queue.
"""

import fcntl
import os
import secrets
from pathlib import Path

from qrtrain.artifacts.versions import check_writable
from qrtrain.errors import QrtrainError
from qrtrain.terminal import say

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def api_token(host: str) -> tuple[str | None, bool]:
    """(the token, whether it was generated): QRTRAIN_API_TOKEN if set; generated when binding beyond localhost."""
    given = os.environ.get("QRTRAIN_API_TOKEN")
    if given is not None:
        if len(given) < 16:
            raise QrtrainError("QRTRAIN_API_TOKEN: too short; use at least 16 characters, e.g. from "
                               "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
        return given, False
    if host in LOCAL_HOSTS:
        return None, False
    return secrets.token_urlsafe(24), True


def lock_root(root: Path):
    """Hold ROOT/.service/serve.lock for the life of this process; refuse if another service holds it."""
    folder = Path(root) / ".service"
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / "serve.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise QrtrainError(f"--root {Path(root).resolve()}: another qrtrain serve (pid {holder}) serves this root; "
                           "stop it, or give this one another --root") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def serve(host: str, port: int, root: Path, workers: int, data_roots: list[Path], trust_proxy: list[str],
          trusted_key: Path | None = None, health_interval: float = 10) -> None:
    import uvicorn

    from qrtrain.service.app import create_app

    for folder in data_roots:
        if not Path(folder).is_dir():
            raise QrtrainError(f"--data-root {folder}: no such folder")
    if trusted_key is not None and not Path(trusted_key).is_file():
        raise QrtrainError(f"--trusted-key {trusted_key}: no such public key file")
    check_writable(Path(root))
    token, generated = api_token(host)
    lock = lock_root(Path(root))  # noqa: F841 (held until the process ends)
    app = create_app(Path(root), workers, token, data_roots, loopback=host in LOCAL_HOSTS, port=port,
                     trusted_key=trusted_key, health_interval=health_interval)
    shown = "localhost" if host in LOCAL_HOSTS else host
    if generated:
        say(f"API token (shown once; set QRTRAIN_API_TOKEN to choose it): {token}")
    link = f"?token={token}" if generated else ("?token=$QRTRAIN_API_TOKEN" if token else "")
    say(f"dashboard: http://{shown}:{port}/{link}  API docs: http://{shown}:{port}/docs  "
        f"root: {Path(root).resolve()}, {workers} worker(s)")
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=bool(trust_proxy),
                forwarded_allow_ips=",".join(trust_proxy) or None)
