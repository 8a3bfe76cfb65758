"""The OpenAI-compatible route: /v1/models, /v1/chat/completions (streaming and not), /v1/completions,
each request forwarded by its `model` (the endpoint) to the deployment that serves it.

    python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8765/v1', api_key='-'); \\
               print(c.chat.completions.create(model='support', messages=[{'role': 'user', 'content': 'Hi'}]))"

Bodies are checked against an allow-list (qrtrain/service/requests.py): unknown fields are refused (422).
Beyond localhost the API token is the client's api_key (`Authorization: Bearer`).
"""

from fastapi import APIRouter, Depends

from qrtrain.service import forwarding
from qrtrain.service.requests import ChatCompletionRequest, CompletionRequest
from qrtrain.service.routes import service

router = APIRouter(prefix="/v1", tags=["inference"])


@router.get("/models", summary="The endpoints that serve, with their live (and canary) version")
def models(state=Depends(service)):
    return forwarding.models(state)


@router.post("/chat/completions", summary="A chat completion from the endpoint's deployment")
async def chat_completions(body: ChatCompletionRequest, state=Depends(service)):
    return await forwarding.forward(state, "chat", body)


@router.post("/completions", summary="A text completion from the endpoint's deployment")
async def completions(body: CompletionRequest, state=Depends(service)):
    return await forwarding.forward(state, "completions", body)
