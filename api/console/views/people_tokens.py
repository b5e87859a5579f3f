"""People's API tokens: make one (shown once) and revoke one, from a person's page (`people.py`).

Your own tokens, as `/api/v1/tokens` (`tokens_create`, `tokens_revoke`: any signed-in person); someone
else's, typically a bot's, as `/api/v1/users/{user}/tokens` with `users.admin`. The token is in the
answer to the POST that made it (`no-store`), never in a URL or a page that can be fetched again.
"""

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from starlette.responses import HTMLResponse, RedirectResponse

from api.access import service
from api.access.reads import token_read
from api.access.schemas import TokenCreate
from api.console.common import Signed, SignedChange, field_errors, refuse
from api.console.pages import PageAnswer, redirect, render
from api.console.session import audit
from api.console.views.people import EXPIRY_HOURS, person_context, person_page, refusal
from api.core.db import SessionDep
from api.core.deps import TokenKeyDep
from api.core.errors import InvalidInput, NotFound
from api.core.security import user_principal
from api.models.base import utcnow

router = APIRouter(prefix="/ui", include_in_schema=False)
FormText = Annotated[str, Form(max_length=8192)]
FormList = Annotated[list[str], Form(max_length=64)]


def _may_manage(request: Request, where: Signed, context: dict[str, Any]) -> str:
    """The operationId the change answers to, or a 403 page: the owner, or `users.admin` for another."""
    if not context["may_tokens"]:
        raise refuse(request, where.signed_in, 403, "error.forbidden")
    return "tokens" if context["itself"] else "users_tokens"


@router.post("/people/{user}/tokens")
async def create_token(
    request: Request,
    session: SessionDep,
    key: TokenKeyDep,
    where: SignedChange,
    user: str,
    name: FormText = "",
    expires: FormText = "",
    scope: FormText = "all",
    permissions: FormList = [],  # noqa: B006 (FastAPI copies a form's default)
) -> HTMLResponse:
    context = await person_context(session, request, where, user)
    operation = _may_manage(request, where, context)
    token_form = {"name": name, "expires": expires, "scope": scope, "permissions": permissions}

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        page = person_page(
            request, where, context, errors=errors, token_form=token_form, status_code=status_code
        )
        return PageAnswer(page)

    expires_at = None
    if expires:
        if not expires.isdigit() or int(expires) not in EXPIRY_HOURS:
            raise refused({"expires_at": f"not one of the offered durations: {expires!r}"}, 422)
        expires_at = utcnow() + timedelta(hours=int(expires))
    fields: dict[str, Any] = {"name": name, "expires_at": expires_at}
    if scope == "some":
        fields["permissions"] = permissions
    try:
        data = TokenCreate.model_validate(fields)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    owner = await service.get_user(session, user)
    try:
        row, token = await service.create_token(
            session, key, owner, data, where.principal, await user_principal(session, owner)
        )
    except InvalidInput as invalid_input:
        raise refused({invalid_input.field or "name": invalid_input.detail}, 422) from None
    audit(session, request, where.principal, f"{operation}_create")
    values = where.context(**context, made=token_read(row, owner.name), token=token)
    page = render(request, "people/token.html", values, signed_in=where.signed_in, status_code=201)
    page.headers["Cache-Control"] = "no-store"
    return page


@router.post("/people/{user}/tokens/{token_id}/revoke")
async def revoke_token(
    request: Request, session: SessionDep, where: SignedChange, user: str, token_id: str
) -> RedirectResponse:
    """Revoked at once; the row stays, so the audit trail can still name it."""
    context = await person_context(session, request, where, user)
    operation = _may_manage(request, where, context)
    found = next((t for t in context["tokens"] if str(t.id) == token_id), None)
    if found is None:
        raise refuse(request, where.signed_in, 404, "people.token_not_found")
    try:
        await service.revoke_token(session, context["person"].id, found.id)
    except NotFound as gone:
        raise refusal(request, where, context, gone, "tokens") from None
    audit(session, request, where.principal, f"{operation}_revoke")
    return redirect(context["person_url"])
