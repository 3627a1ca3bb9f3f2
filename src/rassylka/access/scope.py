"""What a project-scoped API key may see and change; every router asks here.

The rules (docs/security.md): an object of another project is 404, the answer an id that
does not exist gets, so a key learns nothing of other projects; a list shows the key's project
only; a request that names another project (a create, an import, a list's filter) is 403,
whether that project exists or not; creating or deleting projects needs a global key. A global
key (or no authorisation) sees everything.
"""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute

from rassylka.db import SessionDep
from rassylka.errors import Forbidden, NotFound
from rassylka.projects.service import reference_keys


class _OfProject(Protocol):
    id: InstrumentedAttribute[int]
    project_id: InstrumentedAttribute[int]


def project_scope(request: Request) -> int | None:
    """The one project the caller's key sees; None: every project."""
    scope_id: int | None = request.scope.get("state", {}).get("project_scope")
    return scope_id


def own_reference(state: dict[str, Any], reference: str | int | None) -> str | int | None:
    """The project a request names (a code or an id, None: none named), as the operation should
    use it. A global key: the reference unchanged. A scoped key: its project's id, if the
    reference names it (or none is named), else ``Forbidden``; never a query, so that the
    answer is the same whether the other project exists or not."""
    scope_id: int | None = state.get("project_scope")
    if scope_id is None:
        return reference
    if reference is None:
        return scope_id
    code, number = reference_keys(reference)
    if (code is not None and code == state.get("project_code")) or number == scope_id:
        return scope_id
    raise Forbidden()


def scoped_reference(request: Request, reference: str | int | None) -> str | int | None:
    """``own_reference`` for a router."""
    return own_reference(request.scope.get("state", {}), reference)


def require_global(request: Request) -> None:
    """Creating or deleting a project is for a global key."""
    if project_scope(request) is not None:
        raise Forbidden()


def see_project(request: Request, project_id: int, not_found: str) -> None:
    """A project's own endpoint (``/project/{id}``): 404 for a key of another project."""
    scope_id = project_scope(request)
    if scope_id is not None and scope_id != project_id:
        raise NotFound.on("id", not_found.format(project_id))


def owned(model: type[Any], not_found: str) -> Any:
    """A router's dependency: a path's ``{id}`` (an object of ``model``) that belongs to
    another project than the scoped key's is 404, as if it did not exist. Given to the whole
    router, so that no endpoint with an id can be missed; one query, for scoped keys only."""
    table: _OfProject = model  # type: ignore[assignment]

    async def dependency(request: Request, session: SessionDep) -> None:
        scope_id = project_scope(request)
        object_id = request.path_params.get("id")
        if scope_id is None or object_id is None:
            return
        owner = await session.scalar(select(table.project_id).where(table.id == object_id))
        if owner is not None and owner != scope_id:
            raise NotFound.on("id", not_found.format(object_id))

    return Depends(dependency)
