import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from api.core.schemas import ReadModel


class DatasetRead(ReadModel):
    id: uuid.UUID
    project: str
    name: str
    description: str
    latest_version: int | None = Field(description="The highest version that exists; null while empty.")
    created_at: datetime


class DatasetVersionRead(ReadModel):
    id: uuid.UUID
    dataset: str
    number: int
    file_count: int
    total_bytes: int
    content_hash: str = Field(
        description="sha256 over the sorted manifest lines `path\\tsha256\\tsize\\n`: "
        "identical content gives the identical hash."
    )
    created_at: datetime


class DatasetFileRead(BaseModel):
    path: str = Field(examples=["images/cat/0001.png"])
    sha256: str
    size: int


# The multipart body of an upload, for the OpenAPI document (the route reads the stream itself).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A zip: the new version is exactly its files.",
                        },
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Files, not unpacked: the new version is the previous one with "
                            "these added or replaced at `<path>/<filename>`.",
                        },
                        "path": {
                            "type": "string",
                            "description": "The sub-folder the files go to (default: the root).",
                            "examples": ["images/train"],
                        },
                        "description": {
                            "type": "string",
                            "maxLength": 4096,
                            "description": "Sets the dataset's description.",
                        },
                    },
                }
            }
        },
    }
}
