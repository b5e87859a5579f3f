"""Templates: the list, and Primo's form to create, edit and delete one, with the base package's own
parameters (its `parameters.json`) rendered as fields of their types.

A client of `api/templates/service.py` with the permissions of its REST routes (`templates.view`,
`.create`, `.edit`, `.delete`); the choices come from the packages', datasets' and model types'
services, each shown only to a person who may list them (else a text field); the built-in base
packages are offered beside the project's own, with the catalogue's versions and parameters until a
saved template gives the project its copy (docs/base-packages.md). The form is read into the
API's own `TemplateCreate`/`TemplateUpdate`, and the service checks the parameters against the
package's declaration (`api/templates/references.py`): a refusal shows the API's own message at its
field. A changed package or version re-renders its parameters: `templates.js` reads
`.../templates/package` (JSON); without script, the form's "Show its parameters" button posts the
form back to be drawn again, changing nothing.
"""

import json
import math
import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse

from api.base_packages import service as base_packages
from api.console.common import InProject, ProjectChange, ProjectPage, field_errors, refuse, require
from api.console.nav import project_url
from api.console.pages import PageAnswer, redirect, render
from api.console.session import audit
from api.core.db import SessionDep
from api.core.errors import Forbidden, NotFound, TrainyardError
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission
from api.datasets import service as datasets
from api.model_types import service as model_types
from api.packages import service as packages
from api.templates import service
from api.templates.schemas import Augmentation, TemplateCreate, TemplateRead, TemplateUpdate
from shared.enums import PipelineType
from shared.protocol import DEFAULT_MAX_DURATION_SECONDS
from shared.versions import Version

PAGE = "templates"
router = APIRouter(prefix="/ui", include_in_schema=False)

PIPELINES = [kind.value for kind in PipelineType]
AUGMENTATIONS: list[str] = list(Augmentation.__args__)  # type: ignore[attr-defined]
# The form's fields, as the API names them (parameters are `param.<name>`, one field each).
TEXT_FIELDS = (
    "name",
    "model_type",
    "description",
    "pipeline_type",
    "base_package",
    "base_version",
    "dataset",
    "dataset_version",
    "dataset_path",
    "test_dataset",
    "test_dataset_version",
    "test_dataset_path",
    "augmentation",
    "max_duration_seconds",
    "gpus",
    "processes",
)
OPTIONAL = {
    "base_package",
    "base_version",
    "dataset",
    "dataset_version",
    "dataset_path",
    "test_dataset",
    "test_dataset_version",
    "test_dataset_path",
}
NUMBERS = {"max_duration_seconds", "gpus", "processes"}
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
# A refusal without a field, placed at the field its code is about.
_FIELD_OF_CODE = {
    "model_type_not_found": "model_type",
    "package_not_found": "base_package",
    "package_empty": "base_package",
    "package_version_not_found": "base_version",
    "dataset_not_found": "dataset",
    "dataset_version_not_found": "dataset_version",
    "template_exists": "name",
}


def templates_url(project: str) -> str:
    return f"{project_url(project)}templates/"


def template_url(project: str, template: str) -> str:
    return f"{templates_url(project)}{quote(template, safe='')}/"


# Reading the form -----------------------------------------------------------------------------------


def _number(text: str) -> int | str:
    """An integer field as the API takes it; anything else as sent, for the API's own message."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else text


def _parameter_value(text: str, kind: str) -> Any:
    """A declared parameter's field as JSON of its type when it reads as one, else the text as sent:
    the API then refuses it in its own words (`check_parameters`)."""
    text = text.strip()
    if kind == "int" and _INTEGER.fullmatch(text):
        return int(text)
    if kind == "float":
        if _INTEGER.fullmatch(text):
            return int(text)
        try:
            value = float(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text
    return text


def read_form(form: FormData, declared: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The values the form shows, as text: a refused form is drawn again from these."""
    values: dict[str, Any] = {field: str(form.get(field, "") or "") for field in TEXT_FIELDS}
    values["save_training_data"] = "true" if form.get("save_training_data") else ""
    shown: dict[str, str] = {}
    for item in declared or []:
        key = f"param.{item['name']}"
        if item["type"] == "bool":
            shown[item["name"]] = "true" if form.get(key) == "true" else "false"
        else:
            shown[item["name"]] = str(form.get(key, "") or "")
    values["params"] = shown
    values["parameters_json"] = str(form.get("parameters_json", "") or "")
    return values


def request_body(
    values: dict[str, Any], declared: list[dict[str, Any]] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The API's request body from the form's values, and the errors of what is not even JSON."""
    body: dict[str, Any] = {}
    for field in TEXT_FIELDS:
        text = values[field]
        if field in OPTIONAL and not text.strip():
            body[field] = None
        elif field in NUMBERS or (field.endswith("dataset_version") and text.strip() != "latest"):
            body[field] = _number(text)
        else:
            body[field] = text
    body["save_training_data"] = values["save_training_data"] == "true"
    errors: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    if declared is None:
        raw = values["parameters_json"].strip()
        if raw:
            try:
                parameters = json.loads(raw)
            except ValueError as error:
                errors["parameters"] = f"not JSON: {error}"
            if not isinstance(parameters, dict):
                errors["parameters"] = 'a JSON object of names and values, as {"epochs": 5}'
                parameters = {}
    else:
        for item in declared:
            text = values["params"].get(item["name"], "")
            if item["type"] == "bool":
                parameters[item["name"]] = text == "true"
            elif text.strip():  # empty: the package's default
                parameters[item["name"]] = _parameter_value(text, item["type"])
    body["parameters"] = parameters
    return body, errors


def values_of(template: TemplateRead) -> dict[str, Any]:
    """The form's values for a stored template."""
    values: dict[str, Any] = {}
    for field in TEXT_FIELDS:
        value = getattr(template, field)
        values[field] = "" if value is None else str(value)
    values["save_training_data"] = "true" if template.save_training_data else ""
    values["params"] = {name: _shown(value) for name, value in template.parameters.items()}
    values["parameters_json"] = (
        json.dumps(template.parameters, ensure_ascii=False) if template.parameters else ""
    )
    return values


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def blank_values(package: str = "", version: str = "") -> dict[str, Any]:
    values: dict[str, Any] = {field: "" for field in TEXT_FIELDS}
    values.update(
        pipeline_type="training",
        augmentation="none",
        max_duration_seconds=str(DEFAULT_MAX_DURATION_SECONDS),
        gpus="0",
        processes="1",
        base_package=package,
        base_version=version,
        save_training_data="",
        params={},
        parameters_json="",
    )
    return values


def refusal_errors(error: TrainyardError) -> dict[str, str]:
    field = error.field or _FIELD_OF_CODE.get(error.code, "form")
    return {field: error.detail}


# What the form offers ---------------------------------------------------------------------------------


async def package_choice(session: SessionDep, where: InProject, package: str, version: str) -> dict[str, Any]:
    """The chosen package's versions (newest first), the version its parameters come from (the one
    chosen, else the latest: what the API pins), and its declared parameters (None: any go)."""
    try:
        found = await packages.get_package(session, where.project, package)
    except NotFound:
        # a built-in base package the project has not named yet: the catalogue's versions, as the
        # project's copy will hold them once the template is saved (docs/base-packages.md)
        catalogued = await base_packages.catalogue_package(session, package)
        if catalogued is None:
            raise
        found = catalogued
    page = await packages.list_versions(session, where.project, found, PageParams(limit=MAX_PAGE_SIZE))
    numbers = sorted((Version(item.major, item.minor) for item in page.items), reverse=True)
    chosen = await (
        packages.get_version(session, found, version) if version else packages.latest_version(session, found)
    )
    declared = None if chosen is None else chosen.declared_parameters
    return {
        "versions": [str(number) for number in numbers],
        "version": None if chosen is None else str(Version(chosen.major, chosen.minor)),
        "parameters": declared,
    }


async def choices(session: SessionDep, where: InProject, values: dict[str, Any]) -> dict[str, Any]:
    """The lists the form's selects offer (None: the person may not list them, a text field instead),
    and the chosen package's versions and declared parameters."""
    everything = PageParams(limit=MAX_PAGE_SIZE)
    found: dict[str, Any] = {"model_types": None, "packages": None, "datasets": None}
    if where.principal.can(Permission.MODEL_TYPES_VIEW):
        found["model_types"] = [
            item.name for item in (await model_types.list_model_types(session, everything)).items
        ]
    if where.can(Permission.PACKAGES_VIEW):
        page = await packages.list_packages(session, where.project, everything)
        own = [item.name for item in page.items]
        built_in = await base_packages.catalogue_names(session)
        found["packages"] = own + [name for name in built_in if name not in own]
    if where.can(Permission.DATASETS_VIEW):
        page_of_datasets = await datasets.list_datasets(session, where.project, everything)
        found["datasets"] = [item.name for item in page_of_datasets.items]
    found["versions"], found["declared"] = None, None
    if values["base_package"] and found["packages"] is not None:
        try:
            chosen = await package_choice(session, where, values["base_package"], values["base_version"])
        except NotFound:
            pass  # the API's refusal says so at the field when the form is sent
        else:
            found["versions"], found["declared"] = chosen["versions"], chosen["parameters"]
    return found


async def declared_of(session: SessionDep, where: InProject, values: dict[str, Any]) -> Any:
    """The declaration the form's parameters were drawn from (what the person saw and filled in)."""
    if not values["base_package"] or not where.can(Permission.PACKAGES_VIEW):
        return None
    try:
        chosen = await package_choice(session, where, values["base_package"], values["base_version"])
    except NotFound:
        return None
    return chosen["parameters"]


def form_page(
    request: Request,
    where: InProject,
    offered: dict[str, Any],
    values: dict[str, Any],
    *,
    template: TemplateRead | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    project = where.project.name
    editable = where.can(Permission.TEMPLATES_EDIT if template else Permission.TEMPLATES_CREATE)
    context = where.context(
        active=PAGE,
        template=template,
        values=values,
        errors=errors or {},
        editable=editable,
        may_delete=template is not None and where.can(Permission.TEMPLATES_DELETE),
        pipelines=PIPELINES,
        augmentations=AUGMENTATIONS,
        action=template_url(project, template.name) if template else f"{templates_url(project)}new",
        list_url=templates_url(project),
        package_url=f"{templates_url(project)}package",
        **offered,
    )
    return render(request, "templates/form.html", context, signed_in=where.signed_in, status_code=status_code)


# Routes ---------------------------------------------------------------------------------------------


@router.get("/projects/{project}/templates/")
async def templates_page(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    cursor: str | None = Query(None, max_length=64),
) -> HTMLResponse:
    require(request, where, Permission.TEMPLATES_VIEW)
    page = await service.list_templates(
        session, where.project, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor), None
    )
    context = where.context(
        active=PAGE,
        templates=page.items,
        next_cursor=page.next_cursor,
        may_create=where.can(Permission.TEMPLATES_CREATE),
        template_url=template_url,
    )
    return render(request, "templates/list.html", context, signed_in=where.signed_in)


@router.get("/projects/{project}/templates/new")
async def new_template(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    package: str = Query("", max_length=128),
    version: str = Query("", max_length=32),
) -> HTMLResponse:
    require(request, where, Permission.TEMPLATES_CREATE)
    values = blank_values(package, version)
    return form_page(request, where, await choices(session, where, values), values)


@router.post("/projects/{project}/templates/new")
async def create_template(request: Request, session: SessionDep, where: ProjectChange) -> RedirectResponse:
    """What `POST /api/v1/projects/{project}/templates` does, with its permission, schema and service."""
    require(request, where, Permission.TEMPLATES_CREATE)
    form = await request.form()
    declared = await declared_of(session, where, read_form(form, None))
    values = read_form(form, declared)
    offered = await choices(session, where, values)
    body, errors = request_body(values, declared)

    def refused(found: dict[str, str], status_code: int) -> PageAnswer:
        return PageAnswer(form_page(request, where, offered, values, errors=found, status_code=status_code))

    if form.get("action") == "refresh":
        raise refused({}, 200)  # drawn again for the package chosen; nothing changed
    if errors:
        raise refused(errors, 422)
    try:
        data = TemplateCreate.model_validate(body)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    try:
        await service.create_template(session, where.project, data)
    except TrainyardError as error:
        raise refused(refusal_errors(error), error.status_code) from None
    audit(session, request, where.principal, "templates_create")
    return redirect(templates_url(where.project.name))


@router.get("/projects/{project}/templates/package")
async def package_parameters(
    request: Request,
    session: SessionDep,
    where: ProjectPage,
    package: str = Query(max_length=128),
    version: str = Query("", max_length=32),
) -> dict[str, Any]:
    """For the form's script: a package's versions and the declared parameters of one (JSON)."""
    if not where.can(Permission.PACKAGES_VIEW):
        raise Forbidden("you may not view this project's packages", code="forbidden")
    return await package_choice(session, where, package, version)


@router.get("/projects/{project}/templates/{template}/")
async def template_page(
    request: Request, session: SessionDep, where: ProjectPage, template: str
) -> HTMLResponse:
    require(request, where, Permission.TEMPLATES_VIEW)
    found = await _template(request, session, where, template)
    values = values_of(found)
    return form_page(request, where, await choices(session, where, values), values, template=found)


async def _template(request: Request, session: SessionDep, where: InProject, name: str) -> TemplateRead:
    try:
        found = await service.get_template(session, where.project, name)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "templates.not_found") from None
    return await service.template_read(session, where.project, found)


@router.post("/projects/{project}/templates/{template}/")
async def update_template(
    request: Request, session: SessionDep, where: ProjectChange, template: str
) -> RedirectResponse:
    """What `PATCH .../templates/{template}` does with every field of the form."""
    require(request, where, Permission.TEMPLATES_EDIT)
    found = await _template(request, session, where, template)
    form = await request.form()
    declared = await declared_of(session, where, read_form(form, None))
    values = read_form(form, declared)
    offered = await choices(session, where, values)
    body, errors = request_body(values, declared)

    def refused(found_errors: dict[str, str], status_code: int) -> PageAnswer:
        page = form_page(
            request, where, offered, values, template=found, errors=found_errors, status_code=status_code
        )
        return PageAnswer(page)

    if form.get("action") == "refresh":
        raise refused({}, 200)
    if errors:
        raise refused(errors, 422)
    try:
        data = TemplateUpdate.model_validate(body)
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    try:
        await service.update_template(session, where.project, template, data)
    except TrainyardError as error:
        raise refused(refusal_errors(error), error.status_code) from None
    audit(session, request, where.principal, "templates_update")
    return redirect(templates_url(where.project.name))


@router.post("/projects/{project}/templates/{template}/delete")
async def delete_template(
    request: Request, session: SessionDep, where: ProjectChange, template: str
) -> RedirectResponse:
    """What `DELETE .../templates/{template}` does: refused while a process is made from it."""
    require(request, where, Permission.TEMPLATES_DELETE)
    found = await _template(request, session, where, template)
    try:
        await service.delete_template(session, await service.get_template(session, where.project, template))
    except TrainyardError as error:
        values = values_of(found)
        page = form_page(
            request,
            where,
            await choices(session, where, values),
            values,
            template=found,
            errors={"form": error.detail},
            status_code=error.status_code,
        )
        raise PageAnswer(page) from None
    audit(session, request, where.principal, "templates_delete")
    return redirect(templates_url(where.project.name))
