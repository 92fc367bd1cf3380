"""HTML pages: sign in/out, the labeling page, the admin page."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from active_learning.queue import auth
from active_learning.queue.app import admin_user, config_of, current_user, get_db, templates
from active_learning.queue.config import QueueConfig
from active_learning.queue.models import User
from active_learning.queue.stats import queue_stats

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request):
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login")
def login(request: Request, name: str = Form(...), password: str = Form(...),
          db: Session = Depends(get_db), config: QueueConfig = Depends(config_of)):
    user = auth.check_password(db, name, password)
    if user is None:
        return templates.TemplateResponse(request, "login.html", {"error": "wrong name or password"},
                                          status_code=401)
    token = auth.open_session(db, user, config.session_hours)
    db.commit()
    response = RedirectResponse("/admin" if user.role == "admin" else "/", status_code=303)
    response.set_cookie(auth.SESSION_COOKIE, token, max_age=int(config.session_hours * 3600),
                        httponly=True, samesite="strict", secure=config.secure_cookies)
    return response


@router.post("/logout")
def logout(request: Request, db: Session = Depends(get_db)):
    token = request.cookies.get(auth.SESSION_COOKIE)
    if token:
        auth.close_session(db, token)
        db.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def label_page(request: Request, user: User = Depends(current_user)):
    return templates.TemplateResponse(request, "label.html", {"user": user})


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, user: User = Depends(admin_user), db: Session = Depends(get_db)):
    return templates.TemplateResponse(request, "admin.html", {"user": user, "stats": queue_stats(db)})
