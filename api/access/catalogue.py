"""The permission catalogue as people read it, and the built-in roles made from it."""

from sqlalchemy.ext.asyncio import AsyncSession

from api.core.repository import dialect_insert
from api.core.security import ALL_PERMISSIONS, Permission
from api.models import Role
from api.models.base import utcnow

P = Permission

DESCRIPTIONS: dict[Permission, str] = {
    P.PROJECTS_VIEW: "Projects - View: see the project and its members",
    P.PROJECTS_ADMIN: "Projects - Admin: create projects, edit and delete the project, manage its members",
    P.TEMPLATES_VIEW: "Training templates - View",
    P.TEMPLATES_CREATE: "Training templates - Create",
    P.TEMPLATES_EDIT: "Training templates - Edit",
    P.TEMPLATES_DELETE: "Training templates - Delete",
    P.PROCESSES_VIEW: "Training processes - View, with their audit trail",
    P.PROCESSES_CREATE: "Training processes - Create",
    P.PROCESSES_MANAGE: "Training processes - Manage: start, stop, restart, enable, disable",
    P.PROCESSES_DELETE: "Training processes - Delete",
    P.RUNS_VIEW: "Runs - View: status, metrics, logs, artifacts, results, evaluation",
    P.PACKAGES_VIEW: "ML packages - View and download",
    P.PACKAGES_UPLOAD: "ML packages - Upload a version",
    P.PACKAGES_DELETE: "ML packages - Delete",
    P.DATASETS_VIEW: "Datasets - View and download",
    P.DATASETS_UPLOAD: "Datasets - Upload a version",
    P.DATASETS_DELETE: "Datasets - Delete",
    P.MODELS_VIEW: "Models - View the versions trained runs made",
    P.MACHINES_VIEW: "Target machines - View (to pick one for a process)",
    P.MACHINES_ADMIN: "Target machines - Admin: register, enable, disable, rotate and revoke agent tokens",
    P.MODEL_TYPES_VIEW: "Model types - View",
    P.MODEL_TYPES_ADMIN: "Model types - Admin",
    P.USERS_VIEW: "Users and roles - View, with other users' token names",
    P.USERS_ADMIN: (
        "Users and roles - Admin: people, bots, roles and others' tokens. Whoever holds it can make "
        "anyone an administrator: grant it to administrators only"
    ),
    P.AUDIT_VIEW: "Audit trail - View (an administrator sees all; others the projects they hold it in)",
    P.SERVICES_VIEW: "Prediction services - View, with their audit trail",
    P.SERVICES_MANAGE: "Prediction services - Publish a version, start, stop, delete",
    P.SERVICES_PREDICT: (
        "Prediction services - Predict, through the API or at the direct address with its secret"
    ),
    P.TOKENS_MANAGE: (
        "Own API tokens - List, make and revoke them. Every user holds it; a narrowed token only if it "
        "names it"
    ),
}

# Permissions that concern the installation rather than one project; in a role held in any project
# they apply everywhere (docs/auth.md).
GLOBAL_PERMISSIONS = frozenset(
    {P.MACHINES_VIEW, P.MACHINES_ADMIN, P.MODEL_TYPES_VIEW, P.MODEL_TYPES_ADMIN, P.USERS_VIEW, P.USERS_ADMIN}
)
# Held by every user for themselves, never through a role: they narrow tokens only.
TOKEN_PERMISSIONS = frozenset({P.TOKENS_MANAGE})

_VIEWER = frozenset(
    {
        P.PROJECTS_VIEW,
        P.TEMPLATES_VIEW,
        P.PROCESSES_VIEW,
        P.RUNS_VIEW,
        P.PACKAGES_VIEW,
        P.DATASETS_VIEW,
        P.MODELS_VIEW,
        P.MACHINES_VIEW,
        P.MODEL_TYPES_VIEW,
        P.SERVICES_VIEW,  # not services.predict: a prediction may cost the machine (issue 15)
    }
)
_TRAINER = _VIEWER | {
    P.TEMPLATES_CREATE,
    P.TEMPLATES_EDIT,
    P.TEMPLATES_DELETE,
    P.PROCESSES_CREATE,
    P.PROCESSES_MANAGE,
    P.PROCESSES_DELETE,
    P.PACKAGES_UPLOAD,
    P.DATASETS_UPLOAD,
    P.SERVICES_MANAGE,
    P.SERVICES_PREDICT,
}
_PROJECT_ADMIN = _TRAINER | {P.PROJECTS_ADMIN, P.PACKAGES_DELETE, P.DATASETS_DELETE, P.AUDIT_VIEW}

BUILTIN_ROLES: dict[str, tuple[str, frozenset[Permission]]] = {
    "viewer": ("Sees everything in the project, changes nothing", _VIEWER),
    "trainer": ("Builds templates, uploads packages and datasets, runs and manages processes", _TRAINER),
    "project-admin": ("Everything in the project, its members and its deletions", _PROJECT_ADMIN),
    "administrator": ("Every permission (what a global administrator holds everywhere)", ALL_PERMISSIONS),
}


def sorted_values(permissions: frozenset[Permission]) -> list[str]:
    """In catalogue order, as people read them."""
    return [p.value for p in Permission if p in permissions]


async def ensure_builtin_roles(session: AsyncSession) -> None:
    """Create the built-in roles, and give them this code's permissions: run at every start, by every
    replica at once if need be (INSERT ... ON CONFLICT, then UPDATE)."""
    now = utcnow()
    insert = dialect_insert(session)
    for name, (description, permissions) in BUILTIN_ROLES.items():
        values = {
            "description": description,
            "permissions": sorted_values(permissions),
            "builtin": True,
            "updated_at": now,
        }
        statement = insert(Role).values(name=name, created_at=now, **values)
        await session.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))
