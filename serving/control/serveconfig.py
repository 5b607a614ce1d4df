"""Ray Serve config files for the server: written by ``serving config``, checked by ``serving
config --check``.

The file deploys the application through its builder (``cluster.app``) with the server config
as ``args``, so ``serve deploy`` and a RayService's ``serveConfigV2`` run what ``serving serve``
runs with the same arguments, sized to the cluster they land on. Ray's schema ignores keys it
does not know (a ``num_replica`` typo deploys the default, ray #61439), so the check walks
every key against the schema's fields itself, and the ``args`` against the server config.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import pydantic
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config import ServerConfig, describe_errors

IMPORT_PATH = "serving.control.cluster:app"
FREE_FORM = {"args", "runtime_env", "user_config", "ray_actor_options.runtime_env"}
"""Keys whose values Ray does not type (``args`` is checked against the server config)."""


def render(config: ServerConfig, *, name: str) -> str:
    """The config file (YAML) that deploys ``config`` as application ``name``."""
    args = config.model_dump(mode="json", exclude_defaults=True)
    document = {
        "proxy_location": "Disabled",
        "applications": [
            {"name": name, "import_path": IMPORT_PATH, "route_prefix": None, "args": args}
        ],
    }
    problems = check(document)
    assert not problems, problems  # what we write must pass our own check
    header = (
        "# Ray Serve config for the serving application (`serving config`): deploy with\n"
        "# `serve deploy FILE`, or paste under a RayService's spec.serveConfigV2. Replicas\n"
        "# and their CPUs are sized to the cluster when it deploys, as `serving serve` does.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False)


def check(document: Any) -> list[str]:
    """Every problem with a config file's contents, each naming its key: unknown keys
    anywhere, what Ray's schema refuses, and the server config of each application that
    deploys this server."""
    if not isinstance(document, dict):
        return ["the config must be a mapping"]
    problems = [f"unknown key '{key}'" for key in unknown_keys(document, ServeDeploySchema, "")]
    try:
        schema = ServeDeploySchema.model_validate(document)
    except pydantic.ValidationError as error:
        return [*problems, f"Ray Serve's schema: {describe_errors(error)}"]
    for index, application in enumerate(schema.applications):
        if application.import_path not in (IMPORT_PATH, IMPORT_PATH.replace(":", ".")):
            continue
        try:
            ServerConfig.model_validate(application.args or {})
        except pydantic.ValidationError as error:
            problems.append(f"applications[{index}].args: {describe_errors(error)}")
    return problems


def unknown_keys(document: dict[str, Any], model: type[pydantic.BaseModel], path: str) -> list[str]:
    """Keys of ``document`` (recursively) that ``model`` has no field for."""
    found = []
    for key, value in document.items():
        field = model.model_fields.get(key)
        here = f"{path}{key}"
        if field is None:
            found.append(here)
            continue
        if here.split("[")[0] in FREE_FORM or key in FREE_FORM:
            continue
        inner = _model_in(field.annotation)
        if inner is None:
            continue
        if isinstance(value, dict):
            found += unknown_keys(value, inner, f"{here}.")
        elif isinstance(value, list):
            for position, item in enumerate(value):
                if isinstance(item, dict):
                    found += unknown_keys(item, inner, f"{here}[{position}].")
    return found


def _model_in(annotation: Any) -> type[pydantic.BaseModel] | None:
    """The pydantic model an annotation holds (itself, or inside Optional/list/Union)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found is not None:
                return found
    return None
