import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from api.core.schemas import Description, Name, ReadModel, RequestModel
from api.core.security import Permission

Password = Annotated[str, Field(min_length=12, max_length=1024, description="12 characters or more.")]
TokenName = Annotated[str, Field(min_length=1, max_length=128, examples=["rpa-invoices"])]
PermissionList = Annotated[
    list[str],
    Field(
        max_length=len(Permission),
        description="Names from `GET /permissions`; an unknown one is refused (`unknown_permission`).",
        json_schema_extra={"items": {"type": "string", "enum": [p.value for p in Permission]}},
        examples=[["processes.view", "processes.manage"]],
    ),
]


class UserCreate(RequestModel):
    name: Name
    display_name: Annotated[str, Field(max_length=256)] = ""
    password: Password | None = Field(default=None, description="None for a bot: it uses API tokens only.")
    is_admin: bool = False
    enabled: bool = True

    model_config = {"json_schema_extra": {"examples": [{"name": "rpa-invoices", "display_name": "RPA bot"}]}}


class UserUpdate(RequestModel):
    display_name: Annotated[str, Field(max_length=256)] | None = None
    password: Password | None = None
    is_admin: bool | None = None
    enabled: bool | None = Field(default=None, description="A disabled user's tokens stop working at once.")
    revoke_tokens: bool | None = Field(
        default=None,
        description="End every token of the user, API tokens included. None: true when an "
        "administrator sets another user's password, false otherwise (a new password always ends the "
        "user's login tokens).",
    )


class UserRead(ReadModel):
    id: uuid.UUID
    name: str
    display_name: str
    is_admin: bool = Field(description="A global administrator: every permission in every project.")
    enabled: bool
    has_password: bool = Field(description="False for bots, which cannot log in.")
    created_at: datetime


class PermissionRead(ReadModel):
    name: str
    description: str
    scope: Literal["project", "global", "token"] = Field(
        description="`project`: applies in the projects where the role is held; `global`: everywhere; "
        "`token`: every user holds it for their own tokens, and only a narrowed token can lack it."
    )


class RoleCreate(RequestModel):
    name: Name
    description: Description = ""
    permissions: PermissionList


class RoleUpdate(RequestModel):
    description: Description | None = None
    permissions: PermissionList | None = None


class RoleRead(ReadModel):
    id: uuid.UUID
    name: str
    description: str
    permissions: list[str]
    builtin: bool = Field(description="Built-in roles are kept in step with the code and cannot change.")
    created_at: datetime
    updated_at: datetime


class MemberSet(RequestModel):
    role: Name


class MemberRead(ReadModel):
    project: str
    user: str
    display_name: str
    role: str
    permissions: list[str]
    created_at: datetime


class TokenCreate(RequestModel):
    name: TokenName
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="None: valid until revoked. Either way capped at the expiry of the token that makes it.",
    )
    permissions: PermissionList | None = Field(
        default=None, description="Narrow the token to these of its owner's permissions; None: all of them."
    )


class TokenRead(ReadModel):
    id: uuid.UUID
    user: str
    name: str
    kind: Literal["api", "login"]
    permissions: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None


class TokenWithSecret(TokenRead):
    token: str = Field(description="The token: shown this once, stored only as its HMAC.")


class LoginRequest(RequestModel):
    username: Annotated[str, Field(min_length=1, max_length=512)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class LoginReply(ReadModel):
    token: str = Field(description="Send as `Authorization: Bearer <token>`; shown this once.")
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    user: UserRead


class PasswordChange(RequestModel):
    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Password


class ProjectRole(ReadModel):
    project: str
    role: str
    permissions: list[str]


class MeRead(ReadModel):
    user: UserRead
    token: TokenRead | None = Field(description="The token of this request (none for the bootstrap token).")
    permissions: list[str] = Field(description="Held in at least one project, or everywhere.")
    projects: list[ProjectRole]


class AuditEventRead(ReadModel):
    id: uuid.UUID
    at: datetime
    actor_kind: str
    actor_id: uuid.UUID | None
    actor_name: str
    token_id: uuid.UUID | None
    action: str = Field(description="The operationId of the change.")
    method: str
    path: str
    project_id: uuid.UUID | None
