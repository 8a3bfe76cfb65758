"""`qrtrain serve`: the API token decision, then uvicorn.

    qrtrain serve                                   # 127.0.0.1:8765, no token needed (QRTRAIN_API_TOKEN: required)
    QRTRAIN_API_TOKEN=secret qrtrain serve --host 0.0.0.0 --workers 2
"""

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


def serve(host: str, port: int, root: Path, workers: int, data_roots: list[Path]) -> None:
    import uvicorn

    from qrtrain.service.app import create_app

    for folder in data_roots:
        if not Path(folder).is_dir():
            raise QrtrainError(f"--data-root {folder}: no such folder")
    check_writable(Path(root))
    token, generated = api_token(host)
    app = create_app(Path(root), workers, token, data_roots)
    shown = "localhost" if host in LOCAL_HOSTS else host
    if generated:
        say(f"API token (shown once; set QRTRAIN_API_TOKEN to choose it): {token}")
    say(f"dashboard: http://{shown}:{port}/{'?token=' + token if token else ''}  API docs: http://{shown}:{port}/docs  "
        f"root: {Path(root).resolve()}, {workers} worker(s)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
