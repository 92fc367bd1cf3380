"""The FastAPI application: database wiring and who-may-do-what dependencies. Routes live
in ``api`` (JSON) and ``pages`` (HTML)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from active_learning.queue import auth
from active_learning.queue.config import QueueConfig
from active_learning.queue.db import make_engine, session_factory
from active_learning.queue.models import User

templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


class NotSignedIn(Exception):
    pass


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as db:
        yield db


def config_of(request: Request) -> QueueConfig:
    return request.app.state.config


def current_user(request: Request, db: Session = Depends(get_db)) -> User:
    user = auth.session_user(db, request.cookies.get(auth.SESSION_COOKIE))
    if user is None:
        raise NotSignedIn()
    return user


def is_signed_in(request: Request) -> bool:
    """Whether the request's cookie signs a user in (outside the dependencies)."""
    with request.app.state.sessions() as db:
        return auth.session_user(db, request.cookies.get(auth.SESSION_COOKIE)) is not None


def admin_user(user: User = Depends(current_user)) -> User:
    if user.role != "admin":
        raise HTTPException(status_code=403, detail="admins only")
    return user


def create_app(config: QueueConfig) -> FastAPI:
    """The app on ``config.database_url``; the schema must be migrated already
    (``queue init-db``)."""
    from active_learning.queue import api, pages

    # no interactive API docs: every route needs a sign-in, and the docs would not
    app = FastAPI(title="labeling queue", docs_url=None, redoc_url=None, openapi_url=None)
    engine = make_engine(config.database_url)
    app.state.config = config
    app.state.engine = engine
    app.state.sessions = session_factory(engine)

    @app.exception_handler(NotSignedIn)
    def _not_signed_in(request: Request, _exc: NotSignedIn):
        # API callers get a bare 401; a browser is sent to the sign-in page
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "sign in first"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI parses a JSON body before any dependency runs, sign-in included: a
        # stranger's malformed body gets the same 401 as any other request of theirs,
        # never the parse details
        if request.url.path.startswith("/api/") and not await run_in_threadpool(is_signed_in, request):
            return _not_signed_in(request, NotSignedIn())
        return await request_validation_exception_handler(request, exc)

    app.include_router(api.router)
    app.include_router(pages.router)
    return app
