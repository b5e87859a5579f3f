"""Who is calling: bearer tokens, their HMACs, and the principal every route depends on.

Every token (API, agent, bootstrap) is stored and found as its HMAC-SHA256 under the secret key and
compared in constant time; none is stored in clear. argon2 is for passwords only, never on this path.

What a user may do depends on the project: a route under `/projects/{project}` is checked against the
role the user holds in that project, and a project the user cannot see answers 404, as if it did not
exist, so that names do not leak (docs/auth.md).
"""

import hashlib
import hmac
import secrets
import string
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.db import SessionDep
from api.core.errors import Forbidden, NotFound, Unauthorized
from api.models import ApiToken, AuditEvent, Machine, Project, ProjectMember, Role, User
from api.models.base import utcnow

TOKEN_PREFIX = "ty_"
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Declares the scheme in the OpenAPI document; the header itself is parsed below, so that every way of
# getting it wrong gets its own problem code.
bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


class Permission(StrEnum):
    """The permission catalogue (Primo's rights, plus ours). Roles are sets of these."""

    PROJECTS_VIEW = "projects.view"
    PROJECTS_ADMIN = "projects.admin"
    TEMPLATES_VIEW = "templates.view"
    TEMPLATES_CREATE = "templates.create"
    TEMPLATES_EDIT = "templates.edit"
    TEMPLATES_DELETE = "templates.delete"
    PROCESSES_VIEW = "processes.view"
    PROCESSES_CREATE = "processes.create"
    PROCESSES_MANAGE = "processes.manage"
    PROCESSES_DELETE = "processes.delete"
    RUNS_VIEW = "runs.view"
    PACKAGES_VIEW = "packages.view"
    PACKAGES_UPLOAD = "packages.upload"
    PACKAGES_DELETE = "packages.delete"
    DATASETS_VIEW = "datasets.view"
    DATASETS_UPLOAD = "datasets.upload"
    DATASETS_DELETE = "datasets.delete"
    MODELS_VIEW = "models.view"
    MACHINES_VIEW = "machines.view"
    MACHINES_ADMIN = "machines.admin"
    MODEL_TYPES_VIEW = "model_types.view"
    MODEL_TYPES_ADMIN = "model_types.admin"
    USERS_VIEW = "users.view"
    USERS_ADMIN = "users.admin"
    AUDIT_VIEW = "audit.view"
    SERVICES_VIEW = "services.view"
    SERVICES_MANAGE = "services.manage"
    SERVICES_PREDICT = "services.predict"
    # Held by every user for their own tokens, not granted by roles: it only matters to a narrowed
    # token, which may list, make and revoke its owner's tokens only if it names it (docs/auth.md).
    TOKENS_MANAGE = "tokens.manage"


ALL_PERMISSIONS = frozenset(Permission)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def known_permissions(values: Iterable[str]) -> frozenset[Permission]:
    """The permissions among `values` this code knows (a stored role may name one since removed)."""
    return frozenset(Permission(v) for v in values if v in Permission._value2member_map_)


_SECRET_ALPHABET = string.ascii_letters + string.digits


def new_token() -> str:
    """A token people recognise: `ty_<id>_<secret>`, 256 bits of secret in letters and digits only, so a
    double click selects all of it and `_` only ever separates its parts."""
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(43))
    return f"{TOKEN_PREFIX}{secrets.token_hex(6)}_{secret}"


def token_hmac(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling. Kept free of how they proved it (a token today; an identity provider later):
    a user is an id, a name, the administrator flag and the permissions of their role per project."""

    kind: Literal["user", "agent"]
    id: uuid.UUID
    name: str
    is_admin: bool = False
    # project id -> the permissions of the role the user holds there.
    memberships: Mapping[uuid.UUID, frozenset[Permission]] = field(default_factory=dict)
    # A narrowed token: only these of the user's permissions count. None: the token is not narrowed.
    scope: frozenset[Permission] | None = None
    token_id: uuid.UUID | None = None
    # When the credential ends (None: never): what a token it makes may not outlive.
    expires_at: datetime | None = None

    @property
    def machine_id(self) -> uuid.UUID:
        assert self.kind == "agent"
        return self.id

    def permissions_in(self, project_id: uuid.UUID | None = None) -> frozenset[Permission]:
        """What the principal may do in a project, or (None) anywhere: in at least one project."""
        if self.kind != "user":
            return frozenset()
        if self.is_admin:
            held = ALL_PERMISSIONS
        elif project_id is None:
            held = frozenset().union(*self.memberships.values())
        else:
            held = self.memberships.get(project_id, frozenset())
        return held if self.scope is None else held & self.scope

    @property
    def manages_own_tokens(self) -> bool:
        """Whether this credential may list, make and revoke its owner's tokens: any user's, unless a
        narrowed token that does not name `tokens.manage`."""
        return self.kind == "user" and (self.scope is None or Permission.TOKENS_MANAGE in self.scope)

    def can(self, permission: Permission, project_id: uuid.UUID | None = None) -> bool:
        return permission in self.permissions_in(project_id)

    def sees(self, project_id: uuid.UUID) -> bool:
        """A project is visible to whoever holds any permission in it."""
        return bool(self.permissions_in(project_id))

    def visible_projects(self) -> frozenset[uuid.UUID] | None:
        """The ids of the projects the principal sees; None: every project (an administrator)."""
        if self.is_admin and self.kind == "user":
            return None
        return frozenset(p for p in self.memberships if self.sees(p))


def _bearer_token(request: Request) -> str:
    # A token in the URL never gets here: api/core/transport.py refuses it on every path, before routing.
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("an `Authorization: Bearer <token>` header is required", code="missing_token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized(
            "the Authorization header must read `Bearer <token>`", code="malformed_authorization"
        )
    return token


def bearer_digest(request: Request) -> str:
    """The HMAC of the request's bearer token: what every token is stored and looked up as."""
    return token_hmac(request.app.state.token_key, _bearer_token(request))


async def authenticate(
    request: Request,
    session: SessionDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    digest = bearer_digest(request)
    user = await user_for_token(session, digest)
    if user is not None:
        return user
    agent = await _as_agent(session, digest)
    if agent is not None:
        return agent
    raise Unauthorized("the token is not valid", code="invalid_token")


# Agent authentication, written once: the machine found by its agent token's HMAC (`digest`), then
# the HMAC compared in constant time (`holds_agent_token`). The hot operations (the poll, a telemetry
# batch) read it in their own first statement, this one with the columns they need added, on their
# own connection; every other agent route reads it through the request's session (`agent_for`).
AGENT_BY_TOKEN = select(Machine.id, Machine.name, Machine.token_hmac).where(
    Machine.token_hmac == bindparam("digest")
)


def holds_agent_token(token_hmac: str | None, digest: str) -> bool:
    """Whether the `token_hmac` of the machine `AGENT_BY_TOKEN` found for `digest` (None: none found)
    is `digest`, compared in constant time; a revoked token (NULL) is nobody's."""
    return token_hmac is not None and token_hmac != "" and hmac.compare_digest(token_hmac, digest)


async def _as_agent(session: AsyncSession, digest: str) -> Principal | None:
    found = (await session.execute(AGENT_BY_TOKEN, {"digest": digest})).first()
    if found is not None and holds_agent_token(found.token_hmac, digest):
        return Principal(kind="agent", id=found.id, name=found.name)
    return None


async def refuse_as_agent(session: AsyncSession, digest: str) -> NoReturn:
    """A token that is no machine's, on an agent route: 403 for a user's valid token (`current_agent`),
    401 otherwise, as `authenticate` then `current_agent` would answer."""
    if await user_for_token(session, digest) is not None:
        raise Forbidden("this route takes a machine's agent token", code="agent_token_required")
    raise Unauthorized("the token is not valid", code="invalid_token")


# A person's or a bot's token with its user, in one statement: every request of theirs reads both.
_TOKEN_WITH_USER = (
    select(ApiToken, User)
    .outerjoin(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hmac == bindparam("digest"))
)


async def user_for_token(session: AsyncSession, digest: str) -> Principal | None:
    now = utcnow()
    found = (await session.execute(_TOKEN_WITH_USER, {"digest": digest})).first()
    if found is None or not hmac.compare_digest(found.ApiToken.token_hmac, digest):
        return None
    api_token, user = found.ApiToken, found.User
    if api_token.revoked_at is not None or (api_token.expires_at and api_token.expires_at <= now):
        raise Unauthorized("the token was revoked or has expired", code="invalid_token")
    if user is None or not user.enabled:
        raise Unauthorized("the token's user is disabled", code="invalid_token")
    if api_token.last_used_at is None or now - api_token.last_used_at > LAST_USED_RESOLUTION:
        # Conditional, so that of many requests at once only the first writes (and locks) the row.
        stale = or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - LAST_USED_RESOLUTION)
        await session.execute(
            update(ApiToken).where(ApiToken.id == api_token.id, stale).values(last_used_at=now),
            execution_options={"synchronize_session": False},
        )
    return Principal(
        kind="user",
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        memberships=await _memberships(session, user.id),
        scope=None if api_token.permissions is None else known_permissions(api_token.permissions),
        token_id=api_token.id,
        expires_at=api_token.expires_at,
    )


async def _memberships(session: AsyncSession, user_id: uuid.UUID) -> dict[uuid.UUID, frozenset[Permission]]:
    rows = await session.execute(
        select(ProjectMember.project_id, Role.permissions)
        .join(Role, Role.id == ProjectMember.role_id)
        .where(ProjectMember.user_id == user_id)
    )
    return {project_id: known_permissions(permissions) for project_id, permissions in rows}


async def user_principal(session: AsyncSession, user: User) -> Principal:
    """The principal a user would be with a token that is not narrowed."""
    return Principal(
        kind="user",
        id=user.id,
        name=user.name,
        is_admin=user.is_admin,
        memberships=await _memberships(session, user.id),
    )


AnyPrincipal = Annotated[Principal, Depends(authenticate)]


def _refuse_agents(principal: Principal) -> None:
    if principal.kind != "user":
        raise Forbidden("agent tokens are accepted on /api/v1/agent/... only", code="agent_token_not_allowed")


async def current_user(
    principal: AnyPrincipal, request: Request, session: SessionDep
) -> AsyncIterator[Principal]:
    """A person's or a bot's token. A change that succeeds leaves a row in the audit trail, written in
    the request's own unit of work: a refused or failed change leaves none."""
    _refuse_agents(principal)
    yield principal
    if request.method not in _SAFE_METHODS:
        route = request.scope.get("route")
        action = getattr(route, "operation_id", None) or request.url.path[:128]
        session.add(audit_event(request, principal, action))


def audit_event(request: Request, principal: Principal, action: str) -> AuditEvent:
    """The audit row a person's or a bot's change leaves, for the request's own unit of work."""
    return AuditEvent(
        actor_kind="user",
        actor_id=principal.id,
        actor_name=principal.name,
        token_id=principal.token_id,
        action=action,
        method=request.method,
        path=request.url.path[:2048],
        project_id=getattr(request.state, "project_id", None),
    )


async def current_agent(
    request: Request,
    session: SessionDep,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """A machine's agent token; the machine is looked up first, as agents are who call these routes."""
    return await agent_for(session, bearer_digest(request))


async def agent_for(session: AsyncSession, digest: str) -> Principal:
    """The machine whose agent token's HMAC is `digest`; 401 or 403 (`refuse_as_agent`) otherwise."""
    agent = await _as_agent(session, digest)
    if agent is None:
        await refuse_as_agent(session, digest)
    return agent


async def current_user_unaudited(principal: AnyPrincipal) -> Principal:
    """A person's or a bot's token on a POST that changes nothing (a prediction): no audit row, which
    would be one write per call on a route called thousands of times a second."""
    _refuse_agents(principal)
    return principal


# scope="function": the audit row is added before the session dependency commits.
CurrentUser = Annotated[Principal, Depends(current_user, scope="function")]
UnauditedUser = Annotated[Principal, Depends(current_user_unaudited)]


async def own_tokens_manager(principal: CurrentUser) -> Principal:
    """The caller, on the routes of their own tokens: a narrowed token needs `tokens.manage` there, so a
    token narrowed to, say, `processes.view` cannot list, make or revoke its owner's other tokens. Not a
    route permission (no role grants it): the routes stay open to any signed-in user."""
    if not principal.manages_own_tokens:
        raise Forbidden("this token is narrowed and does not hold 'tokens.manage'", code="permission_denied")
    return principal


OwnTokensManager = Annotated[Principal, Depends(own_tokens_manager)]
CurrentAgent = Annotated[Principal, Depends(current_agent)]


async def visible_project_id(session: AsyncSession, principal: Principal, name: str) -> uuid.UUID:
    """The id of the project named `name`; 404 `project_not_found` also for a project the principal
    cannot see, with the same words, so that a name's existence does not leak."""
    name = unicodedata.normalize("NFC", name)
    project_id = await session.scalar(select(Project.id).where(Project.name == name))
    if project_id is None or not principal.sees(project_id):
        raise NotFound(f"no project named {name!r}", code="project_not_found")
    return project_id


def requires(permission: Permission, *, audited: bool = True) -> Any:
    """The dependency a route declares for the permission it needs: `Annotated[Principal, requires(...)]`.

    Under `/projects/{project}` the permission is checked in that project (404 first if the caller
    cannot see it); elsewhere it must be held in at least one project (or by an administrator).
    The OpenAPI document lists it as the operation's `x-permission` (api/core/openapi.py).
    `audited=False`: a POST that changes nothing leaves no audit row (`current_user_unaudited`).
    """
    return _audited_check(permission) if audited else _unaudited_check(permission)


def _audited_check(permission: Permission) -> Any:
    async def check(request: Request, principal: CurrentUser, session: SessionDep) -> Principal:
        return await _check_in_project(permission, request, principal, session)

    check.__name__ = f"requires_{permission.name.lower()}"
    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


def _unaudited_check(permission: Permission) -> Any:
    async def check(request: Request, principal: UnauditedUser, session: SessionDep) -> Principal:
        return await _check_in_project(permission, request, principal, session)

    check.__name__ = f"requires_{permission.name.lower()}_unaudited"
    check.permission = permission  # type: ignore[attr-defined]
    return Depends(check)


async def _check_in_project(
    permission: Permission, request: Request, principal: Principal, session: AsyncSession
) -> Principal:
    project = request.path_params.get("project")
    project_id = None
    if project is not None:
        project_id = await visible_project_id(session, principal, project)
        request.state.project_id = project_id
    if not principal.can(permission, project_id):
        where = f" in project {project!r}" if project is not None else ""
        raise Forbidden(f"this needs the permission {permission.value!r}{where}", code="permission_denied")
    return principal


async def ensure_bootstrap_admin(session: SessionDep, key: bytes, bootstrap_token: str) -> bool:
    """Create the first administrator, holding the bootstrap token, if nobody exists yet."""
    if await session.scalar(select(User.id).limit(1)) is not None:
        return False
    admin = User(name="admin", display_name="Administrator", is_admin=True)
    session.add(admin)
    await session.flush()
    session.add(ApiToken(user_id=admin.id, name="bootstrap", token_hmac=token_hmac(key, bootstrap_token)))
    return True
