"""The API's one settings object, read from `TRAINYARD_*` variables and validated at start-up.

Nothing else in `api/` reads the environment.
"""

import os
import secrets
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.archive import ArchiveLimits

SECRET_KEY_FILE = "secret_key"
BLOBS_FOLDER = "blobs"
S3_SCHEME = "s3://"
MIN_BOOTSTRAP_TOKEN_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="Where the SQLite file, secrets and blobs live.")
    database_url: str | None = Field(default=None, description="Default: an SQLite file in the data dir.")
    # The blob store (docs/storage.md). On S3 the credentials and region come from the standard
    # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION, read by the S3 client itself: the one
    # exception to "nothing else reads the environment", so that every AWS tool's way of handing them
    # over keeps working and no secret is copied into this object.
    blob_store: str | None = Field(
        default=None, description="A folder, or s3://bucket/prefix. Default: the data dir's blobs."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible server other than AWS (http or https)."
    )
    # Presigned URLs past what agents use (docs/storage.md): people's downloads answered 307 to the
    # bucket (needs static AWS_* credentials, and an S3 endpoint people's browsers and clients reach),
    # and the part size of an agent's direct multipart upload.
    s3_redirect_downloads: bool = Field(
        default=True, description="On S3, answer people's downloads 307 to a presigned URL."
    )
    direct_upload_part_bytes: int = Field(
        default=64 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="A direct upload past this size goes up in parts of this size (S3: 5 MiB-5 GiB).",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    bootstrap_token: SecretStr | None = None
    secret_key: SecretStr | None = None
    metrics_token: SecretStr | None = None

    offline_after: float = Field(default=60.0, gt=0, description="Seconds without a poll before offline.")
    lost_after: float = Field(default=600.0, gt=0, description="Seconds offline before a run is lost.")
    start_timeout: float = Field(default=300.0, gt=0, description="Seconds for an agent to take a start.")
    sweep_interval: float = Field(default=2.0, gt=0, description="Seconds between timeout sweeps.")
    schedule_interval: float = Field(default=5.0, gt=0, description="Seconds between schedule checks.")
    # The blob collector (docs/storage.md, "Garbage collection").
    blob_gc_grace_seconds: float = Field(
        default=24 * 3600.0, ge=0, description="How long a blob nothing refers to is kept before it goes."
    )
    blob_gc_interval_seconds: float = Field(
        default=3600.0, ge=0, description="Seconds between the API's collector passes; 0 turns them off."
    )

    max_json_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_telemetry_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="A telemetry batch, as JSON."
    )
    max_package_bytes: int = Field(default=1024**3, ge=1024, description="A package zip, as uploaded.")
    max_dataset_bytes: int = Field(default=8 * 1024**3, ge=1024, description="One dataset upload.")
    max_archive_files: int = Field(default=100_000, ge=1, description="Files in one zip.")
    max_archive_bytes: int = Field(default=16 * 1024**3, ge=1024, description="A zip's bytes, unpacked.")
    max_archive_ratio: int = Field(
        default=200, ge=2, description="Unpacked/packed beyond which a zip is a bomb."
    )
    db_pool_size: int = Field(default=10, ge=1)
    webhooks_allow_private: bool = Field(
        default=False,
        description="Let webhooks target loopback, private and link-local addresses (docs/clients.md).",
    )

    # Logins (docs/auth.md): argon2 verifications at once, and a token bucket per client address and
    # per username, in this process.
    login_verify_concurrency: int | None = Field(
        default=None, ge=1, description="argon2 verifications at once; default: the CPUs."
    )
    login_ip_burst: int = Field(default=30, ge=1, description="Logins one address may try at once.")
    login_ip_per_minute: float = Field(default=30.0, gt=0, description="And then, per minute.")
    login_name_burst: int = Field(default=20, ge=1, description="Logins to one username at once.")
    login_name_per_minute: float = Field(default=10.0, gt=0, description="And then, per minute.")

    @field_validator("bootstrap_token")
    @classmethod
    def _bootstrap_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_BOOTSTRAP_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_BOOTSTRAP_TOKEN_LENGTH} characters")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("blob_store")
    @classmethod
    def _blob_store_well_formed(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(S3_SCHEME):
            bucket = value.removeprefix(S3_SCHEME).partition("/")[0]
            if not bucket:
                raise ValueError("an S3 blob store reads s3://bucket or s3://bucket/prefix")
        elif value is not None and "://" in value:
            raise ValueError("a folder or s3://bucket/prefix")
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        if self.lost_after <= self.offline_after:
            raise ValueError("TRAINYARD_LOST_AFTER must be greater than TRAINYARD_OFFLINE_AFTER")
        if self.is_sqlite is False and self.secret_key is None:
            raise ValueError(
                "TRAINYARD_SECRET_KEY is required on PostgreSQL: every API replica must share it"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trainyard.db').resolve()}"

    @property
    def s3_bucket_and_prefix(self) -> tuple[str, str] | None:
        """The bucket and key prefix when the blob store is S3, else None."""
        if self.blob_store is None or not self.blob_store.startswith(S3_SCHEME):
            return None
        bucket, _, prefix = self.blob_store.removeprefix(S3_SCHEME).partition("/")
        return bucket, prefix.strip("/")

    @property
    def blob_folder(self) -> Path:
        """The local blob store's folder; an S3 store keeps its scratch files here too."""
        if self.blob_store is None or self.s3_bucket_and_prefix is not None:
            return self.data_dir / BLOBS_FOLDER
        return Path(self.blob_store)

    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_files=self.max_archive_files,
            max_total_bytes=self.max_archive_bytes,
            max_file_bytes=self.max_archive_bytes,
            max_ratio=self.max_archive_ratio,
        )

    @property
    def login_verifications(self) -> int:
        return self.login_verify_concurrency or os.cpu_count() or 1

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def secret_key_bytes(self) -> bytes:
        """The HMAC key for tokens; on SQLite, generated once into the data dir when unset."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        path = self.data_dir / SECRET_KEY_FILE
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                # Created 0600 in the one call: never readable by others, not even for a moment.
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                    handle.write(secrets.token_urlsafe(48))
            except FileExistsError:
                pass  # another process generated it first; read theirs
        return path.read_text(encoding="ascii").strip().encode()
