"""The worker service: implements the contract."""

from __future__ import annotations

from conveyor import Conveyor
from tests.unit.contract_apps.contracts import Image, Thumbnail, resize


def build(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.implement(resize)
    def resize_image(image: Image, width: int = 128) -> Thumbnail:
        return Thumbnail(url=image.url + f"?w={width}", width=width)

    return app
