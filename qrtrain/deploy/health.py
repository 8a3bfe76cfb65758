"""Health checks after going live, and the automatic rollback: `qrtrain serve` runs check_deployments()
every --health-interval seconds.

    qrtrain serve --health-interval 10
    tail outputs/.deployments/events.jsonl            # unhealthy, auto_rollback

A running deployment (live, canary, standby) is healthy when its engine process is alive and its health
path answers 200 within HEALTH_TIMEOUT_S. After FAILURES_TO_UNHEALTHY failures in a row it is marked
unhealthy and its engine stopped; a live one's traffic returns to the standby (the previous version) when
that one is healthy: the auto-rollback. Each is an event, and the caller's audit entry.
"""

import time
from pathlib import Path

from qrtrain.deploy import engines, records

HEALTH_TIMEOUT_S = 5
FAILURES_TO_UNHEALTHY = 2


def healthy(deployment: dict) -> bool:
    import httpx

    if not records.process_alive(deployment["pid"]) or not deployment["port"]:
        return False
    url = f"http://127.0.0.1:{deployment['port']}{engines.ENGINES[deployment['engine']]['health']}"
    try:
        return httpx.get(url, timeout=HEALTH_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def check_deployments(root: Path) -> list[dict]:
    """One round of health checks; the changes it made (unhealthy, auto_rollback), as events."""
    db = records.database(root)
    changes = []
    for deployment in records.listing(db, statuses=("live", "canary", "standby")):
        if healthy(deployment):
            if deployment["health_failures"]:
                records.update(db, deployment["id"], health_failures=0, checked=time.time())
            else:
                records.update(db, deployment["id"], checked=time.time())
            continue
        failures = deployment["health_failures"] + 1
        records.update(db, deployment["id"], health_failures=failures, checked=time.time())
        if failures >= FAILURES_TO_UNHEALTHY:
            changes += mark_unhealthy(root, db, deployment)
    return changes


def mark_unhealthy(root: Path, db: Path, deployment: dict) -> list[dict]:
    state = records.endpoint_state(db, deployment["endpoint"])
    standby = state["standby"]
    switch = {deployment["id"]: "unhealthy"}
    back = deployment["status"] == "live" and standby is not None and healthy(standby)
    if back:
        switch[standby["id"]] = "live"
    expected = {deployment["id"]: deployment["status"], **({standby["id"]: "standby"} if back else {})}
    if not records.switch(db, switch, expected):
        return []  # a command changed the endpoint meanwhile: the next round looks again
    records.stop_process(deployment["pid"], wait_s=5)
    records.update(db, deployment["id"], pid=None, error=f"failed {FAILURES_TO_UNHEALTHY} health checks in a row")
    event = {"endpoint": deployment["endpoint"], "version": deployment["version"], "deployment": deployment["id"],
             "was": deployment["status"]}
    if back:
        event["auto_rollback"] = standby["version"]
    records.record_event(root, "unhealthy", **event)
    return [{"event": "unhealthy", **event}]
