"""The HTTP API (FastAPI): OpenAI's models, completions and chat routes, vLLM's adapter routes.

Every error is OpenAI-shaped JSON. Bodies are read with a size bound before parsing; a bearer key,
when set, guards every route but `GET /health`. One JSON log line per request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from reft_cli.generation.server.adapters import Models
from reft_cli.generation.server.errors import ApiError, bad_request
from reft_cli.generation.server.logprobs import chat_logprobs, completion_logprobs
from reft_cli.generation.server.pending import Choice, Pending
from reft_cli.generation.server.protocol import Job, parse_chat, parse_completion

log = logging.getLogger("reft.serve")


def create_app(
    models: Models,
    api_key: str | None = None,
    allow_adapter_loading: bool = False,
    max_body_bytes: int = 1 << 20,
) -> FastAPI:
    engine = models.engine

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start(asyncio.get_running_loop())
        yield
        engine.close()

    app = FastAPI(
        title="reft serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        line = {"event": "request", "route": request.url.path, "status": err.status}
        log.info(json.dumps(line | {"error": err.code}))
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), err.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(bad_request(str(err)).body(), 400)

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(
                401, "a valid API key is required: Authorization: Bearer KEY", "invalid_api_key"
            )

    guarded = [Depends(authorize)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": engine.waiting, "running": engine.running}

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return models.listing()

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        return await answer(request, parse_completion(body, models), chat=False)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request, max_body_bytes)
        return await answer(request, parse_chat(body, models), chat=True)

    @app.post("/v1/load_adapter", dependencies=guarded)
    async def load_adapter(request: Request) -> dict[str, Any]:
        name, path = _adapter_fields(
            await read_json(request, max_body_bytes), allow_adapter_loading
        )
        if path is None:
            raise bad_request("lora_path (or path) is required", "lora_path")
        await models.load(name, path)
        log.info(json.dumps({"event": "load_adapter", "adapter": name, "path": path}))
        return {"status": "ok", "message": f"adapter {name} loaded", "model": name}

    @app.post("/v1/unload_adapter", dependencies=guarded)
    async def unload_adapter(request: Request) -> dict[str, Any]:
        name, _ = _adapter_fields(await read_json(request, max_body_bytes), allow_adapter_loading)
        await models.unload(name)
        log.info(json.dumps({"event": "unload_adapter", "adapter": name}))
        return {"status": "ok", "message": f"adapter {name} unloaded", "model": name}

    async def answer(request: Request, job: Job, chat: bool) -> Any:
        pending = Pending(
            models.tokenizer,
            job.prompts,
            job.adapter,
            job.max_tokens,
            job.sampling,
            job.n,
            job.stop,
            job.stream,
            job.logprobs,
        )
        engine.submit(pending.rows)
        record = Record(request, job, pending)
        if job.stream:
            return StreamingResponse(
                record.stream(chat), media_type="text/event-stream", headers=NO_BUFFERING
            )
        choices = await _until_done(request, pending)
        record.log(200)
        return _body(job, pending, record.id, chat, choices)

    return app


NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Record:
    """One request's id, timing and log line, and its server-sent events when streaming."""

    def __init__(self, request: Request, job: Job, pending: Pending) -> None:
        self.id = uuid.uuid4().hex[:24]
        self.job, self.pending = job, pending
        self.route = request.url.path
        self.start = min(r.queued_at for r in pending.rows)
        self.logged = False

    def log(self, status: int) -> None:
        if self.logged:
            return
        self.logged = True
        started, first = self.pending.started_at, self.pending.first_token_at
        line = {
            "event": "request",
            "id": self.id,
            "route": self.route,
            "model": self.job.model,
            "adapter": self.job.adapter,
            "status": status,
            "stream": self.job.stream,
            "rows": len(self.pending.rows),
            "prompt_tokens": self.pending.prompt_tokens,
            "completion_tokens": self.pending.completion_tokens,
            "queue_s": round(started - self.start, 4) if started is not None else None,
            "ttft_s": round(first - self.start, 4) if first is not None else None,
            "total_s": round(time.monotonic() - self.start, 4),
        }
        log.info(json.dumps(line))

    async def stream(self, chat: bool) -> AsyncIterator[str]:
        """Chunks as vLLM sends them, then usage when asked, then `data: [DONE]`; a client that
        goes away cancels its rows."""
        job, pending, status = self.job, self.pending, 200
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        offsets = [0] * len(pending.rows)  # where each choice's next token's text begins

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": _id(self.id, chat), "object": kind, "created": created}
            body |= {"model": job.model, "choices": choices, **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            if chat:
                yield chunk(
                    [
                        _chat_delta(i, {"role": "assistant", "content": ""}, None)
                        for i in range(len(pending.rows))
                    ]
                )
            async for delta in pending.deltas():
                scores = None
                if delta.logprobs is not None:
                    offset = offsets[delta.index]
                    offsets[delta.index] += sum(len(e.token) for e in delta.logprobs)
                    scores = (
                        chat_logprobs(delta.logprobs)
                        if chat
                        else completion_logprobs(delta.logprobs, offset)
                    )
                if chat:
                    part = {"content": delta.text} if delta.text else {}
                    yield chunk([_chat_delta(delta.index, part, delta.finish, scores)])
                else:
                    yield chunk([_text_choice(delta.index, delta.text, delta.finish, scores)])
            if job.include_usage:
                yield chunk([], usage=_usage(pending))
        except ApiError as err:
            status = err.status
            yield f"data: {json.dumps(err.body())}\n\n"
        except BaseException:
            status = 499  # the client went away
            pending.cancel()
            raise
        finally:
            self.log(status)
        yield "data: [DONE]\n\n"


async def _until_done(request: Request, pending: Pending) -> list[Choice]:
    """The request's choices; a client that disconnects first cancels its rows."""
    task = asyncio.ensure_future(pending.result())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ApiError(499, "client disconnected", "client_disconnected")
    finally:
        if not task.done():
            task.cancel()
            pending.cancel()


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing anything over `limit` bytes before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", "request_too_large")
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", "request_too_large")
    try:
        body = json.loads(data)
    except ValueError as err:
        raise bad_request(f"the body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", code="invalid_json")
    return body


def _adapter_fields(body: dict[str, Any], allowed: bool) -> tuple[str, str | None]:
    if not allowed:
        raise ApiError(
            403,
            "runtime adapter loading is off; start the server with --allow-adapter-loading",
            "adapter_loading_disabled",
        )
    name = body.get("lora_name", body.get("name"))
    path = body.get("lora_path", body.get("path"))
    if not isinstance(name, str) or not name:
        raise bad_request("lora_name (or name) is required", "lora_name")
    if path is not None and not isinstance(path, str):
        raise bad_request("lora_path must be a string", "lora_path")
    return name, path


def _id(request_id: str, chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"


def _usage(pending: Pending) -> dict[str, int]:
    prompt, completion = pending.prompt_tokens, pending.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text_choice(
    index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _chat_delta(
    index: int, delta: dict[str, Any], finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def _body(
    job: Job, pending: Pending, request_id: str, chat: bool, choices: list[Choice]
) -> dict[str, Any]:
    wanted = job.logprobs >= 0
    if chat:
        listed = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.logprobs) if wanted else None,
                "finish_reason": c.finish,
            }
            for i, c in enumerate(choices)
        ]
    else:
        listed = [
            _text_choice(i, c.text, c.finish, completion_logprobs(c.logprobs) if wanted else None)
            for i, c in enumerate(choices)
        ]
    return {
        "id": _id(request_id, chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": job.model,
        "choices": listed,
        "usage": _usage(pending),
    }
