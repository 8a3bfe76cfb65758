"""`qrtrain deploy`: a verified version served by a real inference engine, checked before it takes traffic.

    qrtrain deploy tiny-dialogue/v1 --name support               # verify, build, start, check, go live
    qrtrain deploy tiny-dialogue/v2 --name support --canary 10   # v2 takes 10% of support's requests
    qrtrain deploy --name support --promote                      # the canary becomes live (v1 on standby)
    qrtrain deploy --name support --rollback                     # back to the previous version
    qrtrain deploy --name support --stop
    qrtrain deploy                                               # every deployment: status, health, usage
    qrtrain serve                                                # routes /v1 requests by `model` = endpoint

The story: resolve and verify the version -> build what the engine runs (a merged folder, the adapter, or
a GGUF) -> start the engine (its own process, 127.0.0.1, logs in ROOT/.deployments/ENDPOINT/N-NAME-vN/)
-> readiness -> a smoke completion -> the equivalence gate (qrtrain/deploy/equivalence.py) -> switch
the endpoint's traffic to it (or a canary share). Any failure stops the new engine and leaves the endpoint
as it was (the previous version keeps serving): exit 1 for a failed check, 2 for bad input.
"""

import fcntl
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from qrtrain.deploy import engines, records
from qrtrain.errors import QrtrainError

ENDPOINT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class DeployRequest:
    """What `qrtrain deploy VERSION --name ENDPOINT` was asked for."""

    target: str
    endpoint: str
    root: Path = Path("outputs")
    engine: str = "transformers"
    canary: int = 0
    port: int | None = None
    ready_timeout_s: float = 300
    min_agreement: float = 0.9
    engine_args: list[str] = field(default_factory=list)
    device: str = "auto"


def check_endpoint(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= ENDPOINT_CHARS or name[0] in "-.":
        raise QrtrainError(f"--name {name!r}: an endpoint name is 1-64 letters, digits, '-', '_' or '.', not "
                           "starting with '-' or '.' (clients send it as `model`)")
    return name


@contextmanager
def endpoint_lock(root: Path, endpoint: str):
    """One deploy, promote, rollback or stop of an endpoint at a time."""
    with open(records.folder(root) / f"{endpoint}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QrtrainError(f"endpoint {endpoint}: another `qrtrain deploy` is changing it now; wait for it to "
                               "finish") from None
        yield


def deploy(request: DeployRequest) -> dict:
    """Deploy a version: the new deployment's record once it serves (live or canary)."""
    from qrtrain.artifacts.lineage import find_version

    check_endpoint(request.endpoint)
    if request.engine not in engines.ENGINES:
        raise QrtrainError(f"--engine {request.engine}: expected one of {', '.join(engines.ENGINES)}")
    if not 0 <= request.canary < 100:
        raise QrtrainError(f"--canary {request.canary}: a percentage of the endpoint's requests, 1-99 (0: none)")
    engines.program(request.engine)  # installed, before anything is built
    if request.port is not None:
        engines.check_port(request.port)
    given = Path(request.target)
    version = given if (given / "checksums.json").is_file() else find_version(request.target, request.root)
    if version is None:
        raise QrtrainError(f"{request.target}: no such version under {request.root}; give NAME/vN (`qrtrain list` "
                           "shows them) or a version folder")
    db = records.database(request.root)
    with endpoint_lock(request.root, request.endpoint):
        current = records.endpoint_state(db, request.endpoint)
        if current["canary"] is not None:
            raise QrtrainError(f"endpoint {request.endpoint} has a canary ({current['canary']['version']}); promote it "
                               f"or roll it back first (qrtrain deploy --name {request.endpoint} --promote|--rollback)")
        if request.canary and current["live"] is None:
            raise QrtrainError(f"--canary {request.canary}: endpoint {request.endpoint} has no live version to share "
                               "traffic with; deploy without --canary first")
        return start_and_check(request, version, db, current)


def start_and_check(request: DeployRequest, version: Path, db: Path, current: dict) -> dict:
    from qrtrain.artifacts.resolve import resolve_target
    from qrtrain.deploy.equivalence import equivalence_gate, gate_failure, recorded_report, smoke
    from qrtrain.terminal import say

    version, base = resolve_target(version)  # verified here; a version that does not verify is exit 2
    version, base = version.resolve(), base.resolve()
    name = f"{version.parent.name}/{version.name}"
    digest = json.loads((version / "checksums.json").read_text()).get("root_digest", "")
    report, report_path = recorded_report(version)
    deployment = records.add(db, endpoint=request.endpoint, version=name, version_path=str(version.resolve()),
                             root_digest=digest, engine=request.engine, model_id="", folder="", status="starting")
    folder = (records.folder(request.root) / request.endpoint / f"{deployment['id']}-{version.parent.name}-{version.name}").resolve()
    folder.mkdir(parents=True)
    process, checks = None, {}
    try:
        build = build_for_engine(request.engine, version, base, folder)
        port = request.port or engines.free_port()
        model_id = engines.model_id_for(request.engine, request.endpoint, build)
        lora_rank = json.loads((version / "adapter_config.json").read_text()).get("r")
        cmd = engines.command(request.engine, build, port, model_id, request.engine_args, request.device, base,
                              lora_rank)
        (folder / "command.json").write_text(json.dumps(cmd) + "\n", encoding="utf-8")
        say(f"starting {request.engine} for {name} on 127.0.0.1:{port} (log: {folder / 'engine.log'})")
        process = engines.start(cmd, folder, port, request.engine)
        records.update(db, deployment["id"], folder=str(folder), port=port, pid=process.pid, model_id=model_id)
        url = f"http://127.0.0.1:{port}"
        checks["ready_s"] = engines.wait_ready(process, url, request.engine, folder / "engine.log",
                                               request.ready_timeout_s)
        if request.engine == "ollama":
            engines.create_ollama_model(url, model_id, folder)
        chat = report.get("prompt_format", "chat") == "chat"
        checks["smoke"] = smoke(url, model_id, chat)
        say(f"ready in {checks['ready_s']} s; smoke completion: {checks['smoke']['answer']!r}; equivalence gate on "
            f"{len(report.get('items', []))} questions of {report_path}")
        checks["equivalence"] = equivalence_gate(url, model_id, report, report_path, request.min_agreement)
        records.update(db, deployment["id"], checks=checks)
        if not checks["equivalence"]["passed"]:
            raise QrtrainError(gate_failure(checks["equivalence"]), exit_code=1)
        if process.poll() is not None:
            raise QrtrainError(f"the engine exited (code {process.returncode}) during the checks", exit_code=1)
        go_live(request, db, deployment["id"], current)
    except BaseException as error:
        if process is not None:
            records.stop_process(process.pid)
        message = error.message if isinstance(error, QrtrainError) else f"{type(error).__name__}: {error}"
        records.update(db, deployment["id"], status="failed", error=message, pid=None, checks=checks)
        records.record_event(request.root, "failed", endpoint=request.endpoint, version=name, deployment=deployment["id"],
                             error=message[:500])
        shutil.rmtree(folder / "build", ignore_errors=True)
        if isinstance(error, QrtrainError):
            live = current["live"]
            kept = f"; {live['version']} keeps serving {request.endpoint}" if live else ""
            raise QrtrainError(f"{error.message}\nnothing was deployed (the new engine is stopped){kept}",
                               exit_code=error.exit_code) from None
        raise
    return records.get(db, deployment["id"])


def build_for_engine(engine: str, version: Path, base: Path, folder: Path) -> Path:
    """What the engine runs: the merged folder (transformers), the version itself over its base (vLLM), or the
    full-model GGUF (llama.cpp, Ollama), built by `qrtrain package` with its own checks."""
    from qrtrain.artifacts.package import package

    kind = engines.ENGINES[engine]["build"]
    if kind == "adapter":
        if not (base / "config.json").is_file():
            raise QrtrainError(f"the base model folder {base} is missing; vLLM serves the adapter over it")
        return version
    if kind == "merged":
        return package(version, "merged", folder / "build")
    built = package(version, "gguf", folder / "build")
    gguf = next(built.glob("*.gguf"))
    if engine == "ollama":  # beside the package, not in it (the package's manifest stays exact)
        (folder / "Modelfile").write_text(f"FROM {gguf}\nPARAMETER temperature 0\n", encoding="utf-8")
    return gguf


def go_live(request: DeployRequest, db: Path, deployment_id: int, current: dict) -> None:
    """Route the endpoint to the new deployment: as a canary share, or live with the old live on standby
    (and the standby before it stopped)."""
    live, standby = current["live"], current["standby"]
    expected = {deployment_id: "starting", **({live["id"]: "live"} if live else {}),
                **({standby["id"]: "standby"} if standby else {})}
    if request.canary:
        records.update(db, deployment_id, share=request.canary)
        changes = {deployment_id: "canary"}
    else:
        changes = {deployment_id: "live", **({live["id"]: "standby"} if live else {}),
                   **({standby["id"]: "stopped"} if standby else {})}
    if not records.switch(db, changes, expected):
        raise QrtrainError(f"endpoint {request.endpoint} changed while the new version was checked (a health check "
                           "or another command); run the deploy again", exit_code=1)
    if standby and not request.canary:
        records.stop_process(standby["pid"])
        records.update(db, standby["id"], pid=None)
    event = "canary" if request.canary else "deployed"
    records.record_event(request.root, event, endpoint=request.endpoint, deployment=deployment_id,
                         share=request.canary or 100, previous=live["version"] if live else None)


def promote(root: Path, endpoint: str) -> dict:
    """The canary becomes live; the live one goes to standby, the standby before it is stopped."""
    db = records.database(root)
    with endpoint_lock(root, check_endpoint(endpoint)):
        state = records.endpoint_state(db, endpoint)
        canary, live, standby = state["canary"], state["live"], state["standby"]
        if canary is None:
            raise QrtrainError(f"endpoint {endpoint} has no canary to promote; `qrtrain deploy` lists the deployments")
        changes = {canary["id"]: "live", **({live["id"]: "standby"} if live else {}),
                   **({standby["id"]: "stopped"} if standby else {})}
        switch_or_fail(db, endpoint, changes, state)
        if standby:
            records.stop_process(standby["pid"])
            records.update(db, standby["id"], pid=None)
        records.update(db, canary["id"], share=0)
        records.record_event(root, "promoted", endpoint=endpoint, version=canary["version"], deployment=canary["id"],
                             previous=live["version"] if live else None)
        return records.get(db, canary["id"])


def rollback(root: Path, endpoint: str) -> dict:
    """A canary is stopped (the live version keeps everything); without one, the standby (the previous
    version) becomes live again and the live one is stopped. Returns what serves now."""
    db = records.database(root)
    with endpoint_lock(root, check_endpoint(endpoint)):
        state = records.endpoint_state(db, endpoint)
        canary, live, standby = state["canary"], state["live"], state["standby"]
        if canary is not None:
            stopped, now_live = canary, live
            changes = {canary["id"]: "stopped"}
        elif standby is not None and records.process_alive(standby["pid"]):
            stopped, now_live = live, standby
            changes = {standby["id"]: "live", **({live["id"]: "stopped"} if live else {})}
        else:
            raise QrtrainError(f"endpoint {endpoint} has no canary and no previous version still running to roll back "
                               f"to; deploy the version you want (qrtrain deploy NAME/vN --name {endpoint})")
        switch_or_fail(db, endpoint, changes, state)
        if stopped is not None:
            records.stop_process(stopped["pid"])
            records.update(db, stopped["id"], pid=None)
        records.record_event(root, "rolled_back", endpoint=endpoint, stopped=stopped["version"] if stopped else None,
                             live=now_live["version"] if now_live else None)
        return records.get(db, now_live["id"]) if now_live else {}


def stop(root: Path, endpoint: str) -> list[dict]:
    """Stop every engine of the endpoint; it then answers 404 at the service."""
    db = records.database(root)
    with endpoint_lock(root, check_endpoint(endpoint)):
        running = records.listing(db, endpoint, records.RUNNING)
        if not running:
            raise QrtrainError(f"endpoint {endpoint}: nothing is running; `qrtrain deploy` lists the deployments")
        for deployment in running:
            records.update(db, deployment["id"], status="stopped")
            records.stop_process(deployment["pid"])
            records.update(db, deployment["id"], pid=None)
        records.record_event(root, "stopped", endpoint=endpoint, deployments=[d["id"] for d in running])
        return running


def switch_or_fail(db: Path, endpoint: str, changes: dict, state: dict) -> None:
    expected = {d["id"]: d["status"] for d in state.values() if d is not None}
    if not records.switch(db, changes, expected):
        raise QrtrainError(f"endpoint {endpoint} changed meanwhile (a health check moved it); look again with "
                           "`qrtrain deploy` and retry", exit_code=1)


def deployments(root: Path) -> list[dict]:
    """Every deployment with its usage figures and whether its engine process is alive."""
    db = records.database(root)
    return [{**d, "usage": records.usage_summary(db, d["id"]), "alive": records.process_alive(d["pid"])}
            for d in records.listing(db)]


def print_deployments(rows: list[dict], as_json: bool) -> None:
    from rich.table import Table

    from qrtrain.terminal import table_console

    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="deployments (clients: qrtrain serve's /v1 with model=ENDPOINT)", title_justify="left")
    for column in ("id", "endpoint", "version", "engine", "status", "share", "port", "alive", "requests", "errors",
                   "p50 s", "p99 s", "tokens out"):
        table.add_column(column)
    for d in rows:
        usage = d["usage"]
        table.add_row(*map(str, [d["id"], d["endpoint"], d["version"], d["engine"], d["status"],
                                 f"{d['share']}%" if d["status"] == "canary" else "", d["port"] or "",
                                 "yes" if d["alive"] else "no", usage["requests"], usage["errors"],
                                 usage["latency_p50_s"] or "", usage["latency_p99_s"] or "", usage["completion_tokens"]]))
    table_console().print(table if rows else "no deployments yet")
