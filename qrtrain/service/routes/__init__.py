"""The service's routers, one per resource; each route is a few lines over a function that does the work."""

from fastapi import Request


def service(request: Request):
    """The ServiceState of the app serving this request (a FastAPI dependency)."""
    return request.app.state.service
