"""Deployments over HTTP: every endpoint with its live, canary and standby versions, their health and
usage side by side (`qrtrain deploy` starts and switches them; the service routes /v1 to them).

    curl localhost:8765/api/deployments
"""

from fastapi import APIRouter, Depends

from qrtrain.service.routes import service

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


@router.get("", summary="Endpoints: live, canary and standby versions with health and usage; every deployment")
def deployments(state=Depends(service)):
    from qrtrain.deploy.deploy import deployments as all_deployments

    rows = all_deployments(state.root)
    endpoints = {}
    for row in rows:
        entry = endpoints.setdefault(row["endpoint"], {"endpoint": row["endpoint"], "live": None, "canary": None,
                                                       "standby": None})
        if row["status"] in entry:
            entry[row["status"]] = {key: row[key] for key in ("id", "version", "engine", "share", "port", "alive",
                                                              "health_failures", "checked", "usage", "root_digest")}
    return {"endpoints": list(endpoints.values()), "deployments": rows}
