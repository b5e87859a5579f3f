"""Every ORM class, imported here so Alembic has one place to find the whole schema."""

from api.models.access import ApiToken, AuditEvent, LoginFailures, ProjectMember, Role, User
from api.models.base import Base
from api.models.catalog import ModelType, Project
from api.models.command import AgentCommand
from api.models.dataset import Dataset, DatasetFile, DatasetVersion
from api.models.idempotency import IdempotencyKey
from api.models.machine import Machine
from api.models.output import RunOutput
from api.models.package import Blob, Package, PackageLine, PackageVersion
from api.models.process import Process, ProcessEvent, Run
from api.models.service import Service, ServiceAuditEvent
from api.models.telemetry import MetricPoint, MetricRollup, MetricSeries, RunLogLine, RunTelemetry
from api.models.template import Template
from api.models.webhook import ProcessSchedule, Webhook, WebhookDelivery

__all__ = [
    "AgentCommand",
    "ApiToken",
    "AuditEvent",
    "Base",
    "Blob",
    "Dataset",
    "DatasetFile",
    "DatasetVersion",
    "IdempotencyKey",
    "LoginFailures",
    "Machine",
    "MetricPoint",
    "MetricRollup",
    "MetricSeries",
    "ModelType",
    "Package",
    "PackageLine",
    "PackageVersion",
    "Process",
    "ProcessEvent",
    "ProcessSchedule",
    "Project",
    "ProjectMember",
    "Role",
    "Run",
    "RunLogLine",
    "RunOutput",
    "RunTelemetry",
    "Service",
    "ServiceAuditEvent",
    "Template",
    "User",
    "Webhook",
    "WebhookDelivery",
]
