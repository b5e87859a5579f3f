"""Dependencies wired from the app's state: the settings and the token key.

Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a hop per request that the
agent's long-poll, the hottest route, cannot afford."""

from typing import Annotated

from fastapi import Depends, Request

from api.core.blobs import BlobStore
from api.core.config import Settings
from api.core.notify import Notifier


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_token_key(request: Request) -> bytes:
    key: bytes = request.app.state.token_key
    return key


SettingsDep = Annotated[Settings, Depends(get_settings)]
TokenKeyDep = Annotated[bytes, Depends(get_token_key)]


async def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


BlobsDep = Annotated[BlobStore, Depends(get_blobs)]


async def get_notifier(request: Request) -> Notifier:
    notifier: Notifier = request.app.state.notifier
    return notifier


NotifierDep = Annotated[Notifier, Depends(get_notifier)]
