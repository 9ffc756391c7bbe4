"""A config subclass's field left out of its dump (``exclude=True``: a client object, a
secret kept out of logs) keeps the application's value through the check after configure
(it came back as its default)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic

from miminions import AgentRuntime, RuntimeConfig


class _Client:
    """Something an application keeps in its config and out of any dump."""


class _AppConfig(RuntimeConfig):
    app_client: Any = pydantic.Field(default=None, exclude=True)
    app_token: str | None = pydantic.Field(default=None, exclude=True)


async def test_a_config_subclass_field_kept_out_of_the_dump_survives_the_start(
    make_config: Callable[..., RuntimeConfig],
) -> None:
    client = _Client()
    config = _AppConfig.model_validate(dict(make_config()))
    config.app_client = client
    config.app_token = "s3cret"
    async with AgentRuntime(config=config) as rt:
        assert isinstance(rt.config, _AppConfig)
        # (the runtime works on a copy of the config: the client may be a copy too)
        assert isinstance(rt.config.app_client, _Client), rt.config.app_client
        assert rt.config.app_token == "s3cret"
