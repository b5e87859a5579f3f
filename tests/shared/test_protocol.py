"""The agent <-> API wire: agent requests forbid unknown fields, API replies ignore them."""

import inspect
import struct
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared import direct_blobs, protocol
from shared.direct_blobs import BlobReference, UploadTicket
from shared.enums import CommandKind, CommandState, ReasonCode, RunStatus
from shared.protocol import (
    ERROR_TAIL_MAX_CHARS,
    MAX_TELEMETRY_POINTS,
    AgentRequest,
    ApiReply,
    Command,
    CommandAckReply,
    DatasetManifest,
    ExitedEvent,
    FinishedEvent,
    GpuInfo,
    Hello,
    HelloReply,
    LaunchedEvent,
    ManifestFile,
    OutputReply,
    PackedPoints,
    RunEvent,
    RunEventReply,
    ServiceEvent,
    ServiceEventReply,
    SnapshotUpload,
    StageEvent,
    StartRunPayload,
    StartServicePayload,
    StopRunPayload,
    StopServicePayload,
    TelemetryBatch,
    TelemetryLogs,
    TelemetryPoints,
    TelemetryReply,
)

RUN_ID = uuid.uuid4()
RUN_EVENT: TypeAdapter[Any] = TypeAdapter(RunEvent)

# The smallest valid instance of every model on the wire.
AGENT_REQUESTS: list[tuple[type[AgentRequest], dict[str, Any]]] = [
    (Hello, {"agent_version": "0.1.0"}),
    (LaunchedEvent, {"type": "launched"}),
    (StageEvent, {"type": "stage", "stage": "training"}),
    (ExitedEvent, {"type": "exited"}),
    (FinishedEvent, {"type": "finished"}),
    (SnapshotUpload, {"files": [{"path": "a.png", "sha256": "a" * 64, "size": 1}]}),
    (TelemetryPoints, {"series": [0], "step": [1.0], "value": [0.5], "time": [1.7e9]}),
    (PackedPoints, {"series": "0000", "step": "0" * 16, "value": "0" * 16, "time": "0" * 16}),
    (TelemetryLogs, {"stream": ["stdout"], "time": [1.7e9], "text": ["epoch 1"]}),
    (TelemetryBatch, {"seq": 1}),
    (ServiceEvent, {"type": "serving", "address": "http://10.0.0.7:8300"}),
    (BlobReference, {"sha256": "d" * 64, "size": 1}),
    # The report of an upload sent in parts: its upload id and each part's ETag, in order.
    (BlobReference, {"sha256": "d" * 64, "size": 12, "upload_id": "u-1", "etags": ['"e1"', '"e2"']}),
]
SERVICE_ID = uuid.uuid4()
API_REPLIES: list[tuple[type[ApiReply], dict[str, Any]]] = [
    (GpuInfo, {"index": 0, "name": "NVIDIA A100"}),
    (HelloReply, {"machine": "gpu-01", "stop_runs": []}),
    (
        StartRunPayload,
        {
            "run_id": str(RUN_ID),
            "process_id": str(uuid.uuid4()),
            "project": "invoices",
            "template": "tpl",
            "pipeline_type": "training",
            "max_duration_seconds": 3600,
        },
    ),
    (StopRunPayload, {"run_id": str(RUN_ID), "reason_code": "user_stop"}),
    (
        Command,
        {
            "id": str(uuid.uuid4()),
            "kind": "start_run",
            "run_id": str(RUN_ID),
            "created_at": "2026-01-01T00:00:00Z",
            "payload": {},
        },
    ),
    (CommandAckReply, {"id": str(uuid.uuid4()), "state": "acknowledged"}),
    (RunEventReply, {"run_id": str(RUN_ID), "status": "running", "stop": False}),
    (ManifestFile, {"path": "a.png", "sha256": "a" * 64, "size": 1}),
    (
        DatasetManifest,
        {"dataset": "digits", "version": 1, "path": None, "content_hash": "b" * 64, "files": []},
    ),
    (OutputReply, {"kind": "package"}),
    (TelemetryReply, {"acked_through": 1}),
    (
        StartServicePayload,
        {
            "service_id": str(SERVICE_ID),
            "project": "invoices",
            "name": "digits-online",
            "package": "digits",
            "version": "1.1",
            "package_sha256": "c" * 64,
            "max_run_seconds": 3600,
            "secret": "s" * 43,
        },
    ),
    (StopServicePayload, {"service_id": str(SERVICE_ID), "reason_code": "user_stop"}),
    (ServiceEventReply, {"service_id": str(SERVICE_ID), "status": "serving", "stop": False}),
    (UploadTicket, {"stored": False, "url": "https://s3/b/k?X-Amz-Signature=0", "expires_in": 900}),
    (
        UploadTicket,
        {
            "stored": False,
            "expires_in": 3600,
            "upload_id": "u-1",
            "part_bytes": 5 * 1024**2,
            "parts": ["https://s3/b/k?partNumber=1&uploadId=u-1", "https://s3/b/k?partNumber=2&uploadId=u-1"],
        },
    ),
]


def _wire_models(base: type[BaseModel]) -> set[type[BaseModel]]:
    return {
        value
        for module in (protocol, direct_blobs)
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, base) and value is not base
    }


def test_the_examples_cover_every_model_on_the_wire() -> None:
    assert {model for model, _ in AGENT_REQUESTS} == _wire_models(AgentRequest)
    assert {model for model, _ in API_REPLIES} == _wire_models(ApiReply)


@pytest.mark.parametrize(("model", "fields"), AGENT_REQUESTS, ids=lambda v: getattr(v, "__name__", ""))
def test_agent_requests_forbid_unknown_fields(model: type[AgentRequest], fields: dict[str, Any]) -> None:
    model.model_validate(fields)
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**fields, "from_a_newer_agent": 1})
    assert [(e["type"], e["loc"]) for e in raised.value.errors()] == [
        ("extra_forbidden", ("from_a_newer_agent",))
    ]


@pytest.mark.parametrize(("model", "fields"), API_REPLIES, ids=lambda v: getattr(v, "__name__", ""))
def test_api_replies_ignore_unknown_fields(model: type[ApiReply], fields: dict[str, Any]) -> None:
    parsed = model.model_validate_json(
        model.model_validate(fields).model_dump_json()[:-1] + ', "from_a_newer_api": {"x": [1]}}'
    )
    assert "from_a_newer_api" not in parsed.model_dump()
    assert parsed == model.model_validate(fields)


def test_a_newer_apis_start_payload_still_parses_in_an_older_agent() -> None:
    payload = dict(API_REPLIES[2][1])
    payload |= {"parameters": {"epochs": 3}, "priority": "high", "gpus": 2}
    start = StartRunPayload.model_validate(payload)
    assert start.parameters == {"epochs": 3} and start.gpus == 2
    assert start.augmentation == "none" and start.processes == 1 and start.save_training_data is False


def test_replies_still_validate_their_known_fields() -> None:
    with pytest.raises(ValidationError):
        RunEventReply.model_validate({"run_id": str(RUN_ID), "status": "exploded", "stop": False})
    with pytest.raises(ValidationError):
        CommandAckReply.model_validate({"id": "not-a-uuid", "state": "acknowledged"})


@pytest.mark.parametrize(
    ("body", "model"),
    [
        ({"type": "launched", "pid": 4242}, LaunchedEvent),
        ({"type": "stage", "stage": "evaluating", "progress": 0.5, "eta_seconds": 12.5}, StageEvent),
        ({"type": "exited", "exit_code": 1, "error_tail": "Traceback ..."}, ExitedEvent),
        ({"type": "exited", "signal": 9, "reason_code": "max_duration"}, ExitedEvent),
        ({"type": "finished"}, FinishedEvent),
    ],
)
def test_the_run_event_union_parses_each_type(body: dict[str, Any], model: type[AgentRequest]) -> None:
    event = RUN_EVENT.validate_python(body)
    assert type(event) is model
    assert event.model_dump(exclude_defaults=True) == body | (
        {"reason_code": ReasonCode(body["reason_code"])} if "reason_code" in body else {}
    )
    assert type(RUN_EVENT.validate_json(event.model_dump_json())) is model


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"type": "exploded"}, "union_tag_invalid"),
        ({"stage": "training"}, "union_tag_not_found"),
        ({"type": "launched", "exit_code": 0}, "extra_forbidden"),  # a field of another event type
        ({"type": "stage"}, "missing"),
        ({"type": "stage", "stage": ""}, "string_too_short"),
        ({"type": "stage", "stage": "x", "progress": 1.5}, "less_than_equal"),
        ({"type": "stage", "stage": "x", "progress": -0.1}, "greater_than_equal"),
        ({"type": "exited", "signal": 0}, "greater_than_equal"),
        ({"type": "exited", "reason_code": "because"}, "enum"),
        ({"type": "exited", "error_tail": "x" * (ERROR_TAIL_MAX_CHARS + 1)}, "string_too_long"),
        ({"type": "launched", "pid": 0}, "greater_than_equal"),
    ],
)
def test_run_events_refuse_what_is_not_a_fact(body: dict[str, Any], error_type: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RUN_EVENT.validate_python(body)
    assert error_type in {e["type"] for e in raised.value.errors()}


def test_hello_carries_gpus_and_runs_and_bounds_them() -> None:
    hello = Hello.model_validate(
        {
            "agent_version": "0.1.0",
            "hostname": "gpu-01",
            "gpus": [{"index": 0, "name": "A100", "memory_total_mb": 81920}],
            "runs": [str(RUN_ID)],
        }
    )
    assert hello.gpus[0].memory_total_mb == 81920 and hello.runs == [RUN_ID]
    with pytest.raises(ValidationError):
        Hello.model_validate({"agent_version": "x" * 65})
    with pytest.raises(ValidationError):
        Hello.model_validate({"agent_version": "1", "runs": ["not-a-uuid"]})


def test_enums_on_the_wire_are_their_values() -> None:
    command = Command.model_validate(API_REPLIES[4][1])
    assert command.kind is CommandKind.START_RUN
    assert (
        CommandAckReply.model_validate({"id": str(RUN_ID), "state": "cancelled"}).state
        is CommandState.CANCELLED
    )
    assert RunEventReply.model_validate(API_REPLIES[6][1]).status is RunStatus.RUNNING


def test_packed_points_are_the_hex_of_little_endian_columns() -> None:
    series, step, value, time = (
        [0, 1, 1023],
        [1.0, 2.0, 3.5],
        [0.5, -0.0, 1e300],
        [1.7e9, 1.7e9, 1.7e9 + 0.25],
    )
    packed = PackedPoints.pack(series, step, value, time)
    assert bytes.fromhex(packed.series) == struct.pack("<3H", *series)
    for column, values in ((packed.step, step), (packed.value, value), (packed.time, time)):
        assert bytes.fromhex(column) == struct.pack("<3d", *values)
    batch = TelemetryBatch.model_validate_json(TelemetryBatch(seq=1, packed=packed).model_dump_json())
    assert batch.packed == packed and batch.points.value == []
    assert PackedPoints.pack([], [], [], []) == PackedPoints()


def test_packed_points_are_bounded_as_the_lists_are() -> None:
    PackedPoints(series="00" * 2 * MAX_TELEMETRY_POINTS, value="00" * 8 * MAX_TELEMETRY_POINTS)
    with pytest.raises(ValidationError):
        PackedPoints(series="00" * 2 * (MAX_TELEMETRY_POINTS + 1))
    with pytest.raises(ValidationError):
        PackedPoints(value="00" * 8 * (MAX_TELEMETRY_POINTS + 1))
