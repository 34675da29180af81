"""What console page handlers depend on: the signed-in user, and for changes a writer role and
the form's CSRF token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, Request

from zgate_control.console.session import ConsoleUser, check_csrf, current_user
from zgate_control.problems import ProblemError

__all__ = ["User", "Writer", "writer"]


def _user(request: Request) -> ConsoleUser:
    return current_user(request)


def writer(
    request: Request,
    user: Annotated[ConsoleUser, Depends(_user)],
    csrf: Annotated[str, Form()] = "",
) -> ConsoleUser:
    """A user whose role may change things, posting a form with this session's CSRF token."""
    check_csrf(user, csrf or request.headers.get("x-csrf-token"))
    if not user.can_write:
        raise ProblemError(403, f"a {user.role} may not change anything", slug="forbidden")
    return user


User = Annotated[ConsoleUser, Depends(_user)]
Writer = Annotated[ConsoleUser, Depends(writer)]
