"""``llavidal serve``: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over the generation engine.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events),
``GET /v1/stats`` (engine counters), ``GET /health``. Every request shares the one engine, so concurrent requests
are decoded in the same batches. Requests beyond ``max_batch_size + max_queue`` in flight get 429 with a
Retry-After header; a request that runs past ``request_timeout`` is stopped (504, or an error event when
streaming); a client that goes away has its request cancelled, which frees its batch slot at the next step.
Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, naming the field at fault.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import Request  # at module level: the handlers' annotations are resolved from these globals

from .protocol import Conversation, RequestError, conversation, parse_request

log = logging.getLogger("llavidal.serve")


@dataclass
class ServeConfig:
    base: str
    model_name: str | None = None  # the id clients put in "model" (default: the base folder's name)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # clients send "Authorization: Bearer KEY"; never logged
    media_roots: list[str] = field(default_factory=list)  # folders client paths may point into
    clip: str | None = None  # CLIP for raw videos (default: the model config's mm_vision_tower)
    max_frames: int = 100
    max_video_seconds: float = 600.0
    max_batch_size: int = 8  # sequences decoded together
    max_queue: int = 64  # requests waiting beyond the busy slots; more get 429
    request_timeout: float = 600.0  # seconds from arrival to the last token
    max_request_mb: float = 64.0  # request bodies (base64 videos included)
    max_new_tokens: int = 512  # default and upper bound of max_tokens
    temperature: float = 0.0  # when the request gives none (0: greedy)
    template: str | None = None  # None: the model's own (prompting.model_template)
    system: str | None = None


class ServerState:
    """What the request handlers share: model, tokenizer, engine, media resolver, admission counter."""

    def __init__(self, cfg: ServeConfig, model, tokenizer, engine, media):
        self.cfg, self.model, self.tokenizer, self.engine, self.media = cfg, model, tokenizer, engine, media
        self.name = cfg.model_name or _folder_name(cfg.base)
        self.created = int(time.time())
        self.limit = cfg.max_batch_size + cfg.max_queue
        self.inflight = 0
        self.rejected = 0  # 429
        self.timed_out = 0  # past --request-timeout
        self.disconnected = 0  # the client went away before the end
        self._lock = threading.Lock()

    def admit(self) -> None:
        with self._lock:
            if self.inflight >= self.limit:
                self.rejected += 1
                retry = int(round(self.engine._retry_after()))
                raise RequestError(429, f"the server is busy ({self.inflight} requests in flight, limit {self.limit});"
                                        f" retry in {retry} s", kind="rate_limit_error",
                                   headers={"Retry-After": str(retry)})
            self.inflight += 1

    def release(self) -> None:
        with self._lock:
            self.inflight -= 1

    def check_auth(self, request) -> None:
        key = self.cfg.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise RequestError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                               kind="authentication_error")


def _folder_name(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().name or "llavidal"


async def _read_json(request, limit: int):
    if int(request.headers.get("content-length") or 0) > limit:
        raise RequestError(413, f"the request body is larger than {limit / 2**20:g} MB (--max-request-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is larger than {limit / 2**20:g} MB (--max-request-mb)")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None


def _prepare(state: ServerState, conv: Conversation, req, on_tokens):
    """(blocking, in a worker thread) media -> arrays, prompt -> engine request."""
    from ..inference import GenerationOptions, Query, make_request

    arrays = {m: state.media.array(ref) for m, ref in conv.media.items()}
    cfg = state.cfg
    max_new = req.max_completion_tokens or req.max_tokens or cfg.max_new_tokens
    if max_new > cfg.max_new_tokens:
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise RequestError(400, f"{param}: at most {cfg.max_new_tokens} on this server (--max-new-tokens)",
                           param=param)
    temperature = cfg.temperature if req.temperature is None else req.temperature
    options = GenerationOptions(max_new_tokens=max_new, temperature=temperature, top_p=req.top_p or 1.0,
                                repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed,
                                template=cfg.template, system=conv.system if conv.system is not None else cfg.system)
    query = Query.of(conv.question, arrays, history=conv.history)
    try:
        request = make_request(state.model, state.tokenizer, query, options, on_tokens=on_tokens)
        state.engine.check(request)
    except ValueError as e:
        raise RequestError(400, f"messages: {e}", param="messages") from None
    return request


def _chunk(cid: str, created: int, name: str, delta: dict, finish: str | None = None) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def _usage(result) -> dict:
    completion = len(result.token_ids) + (result.finish_reason == "stop")  # </s> was generated too
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
            "total_tokens": result.prompt_tokens + completion}


def build_app(state: ServerState):
    """The FastAPI application around ``state``."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from ..engine import EngineBusy
    from ..inference import _TextPieces, reply_text

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(state.engine.close)
        state.media.close()

    app = FastAPI(title="LLAVIDAL", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def on_request_error(request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request, exc):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse({"error": {"message": str(exc.detail), "type": kind, "param": None, "code": None}},
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_error(request, exc):
        log.exception("request failed")
        return JSONResponse({"error": {"message": "internal error; see the server log", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        state.check_auth(request)
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": state.created,
                                            "owned_by": "llavidal"}]}

    @app.get("/v1/stats")
    async def stats(request: Request):
        state.check_auth(request)
        from dataclasses import asdict

        s = asdict(state.engine.stats)
        s.update(inflight=state.inflight, rejected=state.rejected, timed_out=state.timed_out,
                 disconnected=state.disconnected, queued=state.engine.queued,
                 busy_slots=state.engine.busy_slots, slots=state.cfg.max_batch_size)
        return s

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        state.check_auth(request)
        body = await _read_json(request, int(state.cfg.max_request_mb * 2**20))
        req = parse_request(body)
        if req.model != state.name:
            raise RequestError(404, f"model: {req.model!r} does not exist; this server serves {state.name!r}",
                               param="model", kind="not_found_error")
        conv = conversation(req)
        state.admit()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + state.cfg.request_timeout
            tokens: asyncio.Queue = asyncio.Queue()
            on_tokens = (lambda ids: loop.call_soon_threadsafe(tokens.put_nowait, ids)) if req.stream else None
            gen_request = await asyncio.to_thread(_prepare, state, conv, req, on_tokens)
            try:
                handle = state.engine.submit(gen_request)
            except EngineBusy as e:
                raise RequestError(429, str(e), kind="rate_limit_error",
                                   headers={"Retry-After": str(int(round(e.retry_after)))}) from None
            except ValueError as e:
                raise RequestError(400, f"messages: {e}", param="messages") from None
        except BaseException:
            state.release()
            raise
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            handle.future.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, None))
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_events(handle, tokens, deadline, cid, created, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            result = await _wait(request, handle, deadline)
        finally:
            handle.cancel()
            state.release()
        return {"id": cid, "object": "chat.completion", "created": created, "model": state.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_text(state.tokenizer,
                                                                                               result)},
                             "finish_reason": result.finish_reason}],
                "usage": _usage(result)}

    async def _wait(request, handle, deadline):
        """The result, or 504 past the deadline; a client that hung up cancels it."""
        future = asyncio.wrap_future(handle.future)
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                state.timed_out += 1
                raise RequestError(504, f"the request ran past {state.cfg.request_timeout:g} s (--request-timeout)",
                                   kind="timeout_error")
            done, _ = await asyncio.wait({future}, timeout=min(remaining, 0.5))
            if done:
                return future.result()
            if await request.is_disconnected():
                log.info("client went away: request cancelled")
                state.disconnected += 1
                handle.cancel()
                return await future

    async def _events(handle, tokens, deadline, cid, created, with_usage):
        loop = asyncio.get_running_loop()
        name = state.name
        text = _TextPieces(state.tokenizer)
        try:
            yield _chunk(cid, created, name, {"role": "assistant", "content": ""})
            while True:
                remaining = deadline - loop.time()
                try:
                    ids = await asyncio.wait_for(tokens.get(), timeout=max(remaining, 0.001))
                except asyncio.TimeoutError:
                    handle.cancel()
                    state.timed_out += 1
                    err = RequestError(504, f"the request ran past {state.cfg.request_timeout:g} s "
                                            "(--request-timeout)", kind="timeout_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                for piece in text.put(ids) if ids is not None else text.end():
                    yield _chunk(cid, created, name, {"content": piece})
                if ids is None:
                    break
            try:
                result = handle.result(timeout=0)
            except Exception:
                log.exception("generation failed")
                err = {"error": {"message": "generation failed; see the server log", "type": "server_error",
                                 "param": None, "code": None}}
                yield f"data: {json.dumps(err)}\n\n"
                return
            yield _chunk(cid, created, name, {}, result.finish_reason)
            if with_usage:
                body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                        "choices": [], "usage": _usage(result)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            state.disconnected += 1
            log.info("client went away mid-stream: request cancelled")
            raise
        finally:  # the end, a timeout, or the client went away (the task is cancelled): the slot is freed
            handle.cancel()
            state.release()

    return app


__all__ = ["ServeConfig", "ServerState", "build_app"]
