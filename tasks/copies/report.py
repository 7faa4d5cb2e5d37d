"""What a person reads in the Prefect UI about copies: which backups went where."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from tasks.core.artifacts import artifact_key


class CopyFailure(BaseModel):
    backup_id: str
    error: str


class CopyReport(BaseModel):
    """One source, one target: what was copied, what was there already, what failed."""

    source: str
    target: str
    copied: list[str] = Field(default_factory=list)
    already_there: list[str] = Field(default_factory=list)
    failed: list[CopyFailure] = Field(default_factory=list)
    bytes: int = 0

    def summary(self) -> str:
        text = (
            f"{len(self.copied)} copied ({self.bytes:,d} bytes), "
            f"{len(self.already_there)} already there"
        )
        return text + (f", {len(self.failed)} FAILED" if self.failed else "")


def publish_copies(report: CopyReport) -> None:
    rows: list[dict[str, object]] = [{"backup": i, "result": "copied"} for i in report.copied]
    rows += [{"backup": i, "result": "already there"} for i in report.already_there]
    rows += [{"backup": f.backup_id, "result": "FAILED: " + f.error} for f in report.failed]
    create_table_artifact(
        rows or [{"backup": "-", "result": "nothing to copy"}],
        key=f"copy-{artifact_key(report.target.rsplit('/', 1)[-1])}",
        description=f"Copy of {report.source} to {report.target}: {report.summary()}",
    )
