"""Shared by producer and worker: the contract only (no handler, no heavy imports)."""

from __future__ import annotations

from pydantic import BaseModel

from conveyor import contract


class Image(BaseModel):
    url: str


class Thumbnail(BaseModel):
    url: str
    width: int


@contract(name="images.resize", queue="images", version=2)
def resize(image: Image, width: int = 128) -> Thumbnail: ...
