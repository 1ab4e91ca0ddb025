"""What every payload shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    """A typed event payload; `event_type` (a Literal on each subclass) is the union's discriminator."""

    model_config = ConfigDict(extra="forbid", frozen=True)
