"""The jobs' bodies in the public contract: a training request in, a job with its progress out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from engine.core.contract import Flag


class Job(BaseModel):
    id: int
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    phase: str | None
    done: int
    total: int
    percent: float | None
    rate: float | None
    eta_s: float | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None
    attempts: int = Field(default=0, description="runs so far: a lost worker's job is retried once")
    worker: str | None = Field(default=None, description="host:pid of the process running it")
    cancel_requested: bool = False


class JobList(BaseModel):
    jobs: list[Job]


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["auto", "impressions", "events"] = Field(
        default="auto",
        description="auto: logged impressions when some were clicked, else the event history",
    )
    promote: Flag = False


class TrainEncoderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(
        default=2, ge=1, le=20, description="passes over the positives (each a few minutes)"
    )
    promote: Flag = Field(
        default=False, description="make it the encoder the next builds embed with"
    )
