"""Every error leaves as JSON `{"error": CODE, "message": TEXT}` with a 4xx status that says whose
fault it is; library errors are mapped here, in one place."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from retrieval.distributed_search import ShardUnavailableError
from retrieval.search import QueryImageError, UnknownIdError

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          413: "too_large", 415: "unsupported_media_type", 422: "invalid", 503: "not_ready"}


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": _CODES.get(status, "error"), "message": message}, status_code=status,
                        headers=headers)


def _validation_message(exc: RequestValidationError | ValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def library_status(exc: ValueError) -> int:
    """The status of an error the library raised for a request's content."""
    if isinstance(exc, UnknownIdError):
        return 404
    if isinstance(exc, QueryImageError):
        return 413 if exc.reason == "too_large" else 415 if exc.reason == "unsupported_format" else 422
    return 400


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(ValidationError)  # bodies the routes validate themselves (multipart, clip-back)
    async def _invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(400, f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")

    @app.exception_handler(ValueError)
    async def _library(request: Request, exc: ValueError) -> JSONResponse:
        return error_response(library_status(exc), str(exc))

    @app.exception_handler(ShardUnavailableError)  # `retr serve --ray`: a shard actor Ray could not restart
    async def _shard_down(request: Request, exc: ShardUnavailableError) -> JSONResponse:
        return error_response(503, str(exc))
