"""ML packages, their versions, and the blobs they are stored in.

Version numbers come from counters that only ever grow (`packages.highest_major`,
`package_lines.highest_minor`), each taken by one conditional UPDATE ... RETURNING: two outputs of one
base version get distinct numbers, and a deleted version's number is never given again.
"""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text, UniqueConstraint, false, text
from sqlalchemy.orm import Mapped, mapped_column

from api.models.base import Base, JSONDocument, new_id, utcnow


class Blob(Base):
    """A file in the blob store, by content. A row exists only once its file is in place."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Package(Base):
    """A project's package; with no project, one of Trainyard's built-in base packages (the catalogue
    `trainyard-api migrate` keeps, api/base_packages/). A project's copy of a built-in one (made when a
    template first names it) is `builtin` too: it holds the catalogue's versions and what its runs
    trained from them, and takes no upload."""

    __tablename__ = "packages"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        # NULLs are distinct in the constraint above: the catalogue's names are kept unique here.
        Index(
            "ix_packages_builtin_name",
            "name",
            unique=True,
            sqlite_where=text("project_id IS NULL"),
            postgresql_where=text("project_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The model types a built-in package is for (names); empty for the others.
    model_types: Mapped[list[str]] = mapped_column(JSONDocument, default=list, server_default=text("'[]'"))
    highest_major: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PackageLine(Base):
    """One major line of a package (1.x, 2.x, ...) and the highest minor it ever gave."""

    __tablename__ = "package_lines"

    package_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("packages.id", ondelete="CASCADE"), primary_key=True
    )
    major: Mapped[int] = mapped_column(primary_key=True)
    highest_minor: Mapped[int] = mapped_column(default=0)


class PackageVersion(Base):
    __tablename__ = "package_versions"
    __table_args__ = (UniqueConstraint("package_id", "major", "minor"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    package_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("packages.id", ondelete="RESTRICT"), index=True)
    major: Mapped[int]
    minor: Mapped[int]
    origin: Mapped[str] = mapped_column(String(16))  # upload | trained | builtin
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root_prefix: Mapped[str] = mapped_column(String(256), default="")
    has_evaluate: Mapped[bool] = mapped_column(Boolean, default=False)
    has_process_data: Mapped[bool] = mapped_column(Boolean, default=False)
    has_predict: Mapped[bool] = mapped_column(Boolean, default=False)
    has_requirements: Mapped[bool] = mapped_column(Boolean, default=False)
    declared_parameters: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument, default=None)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("package_versions.id", ondelete="RESTRICT"), default=None, index=True
    )
    # The run that made it: a historical reference, kept when the run is deleted with its process
    # (so no foreign key), like the rest of the lineage record.
    run_id: Mapped[uuid.UUID | None] = mapped_column(default=None, index=True)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
