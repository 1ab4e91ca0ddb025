"""What every payload shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    """A typed event payload; `event_type` (a Literal on each subclass) is the union's discriminator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    if TYPE_CHECKING:  # each subclass declares it as a Literal field with its one value as default
        event_type: str
