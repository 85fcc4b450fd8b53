"""Structured output: turn ``AgentConfig.response_schema`` into a JSON schema and a validator.

A schema may be a pydantic model class (validated into an instance), a JSON-schema ``dict`` or a
JSON string of one (validated with a small built-in checker covering type, properties,
required, items, enum and additionalProperties: enough for model replies, no extra dependency).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ConfigError
from .response import parse_json_text

__all__ = ["OutputSchema"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def _check(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        ok = False
        for name in names:
            types = _TYPES.get(name, (object,))
            if isinstance(value, bool) and name in ("integer", "number"):
                continue
            if isinstance(value, types):
                ok = True
                break
        if not ok:
            raise ValueError(f"{path}: expected {expected}, got {type(value).__name__}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise ValueError(f"{path}: missing required property {key!r}")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise ValueError(f"{path}: unexpected property {key!r}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


class OutputSchema:
    """A response schema, ready to describe to a model and to validate replies."""

    def __init__(self, schema: Any):
        self.source = schema
        self.model: Any = None
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise ConfigError(f"response_schema is not valid JSON: {exc}") from None
        if isinstance(schema, dict):
            self.json_schema: dict[str, Any] = schema
            self.name = str(schema.get("title", "response"))
        elif isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            self.model = schema
            self.json_schema = schema.model_json_schema()
            self.name = schema.__name__
        else:
            raise ConfigError("response_schema must be a pydantic model class, a JSON-schema "
                              f"dict or a JSON string, not {type(schema).__name__}")

    @classmethod
    def from_config(cls, schema: Any) -> OutputSchema | None:
        return None if schema is None else cls(schema)

    def validate(self, text: str) -> Any:
        """Parse and validate a reply; raises ValueError (or BackendError) describing why not."""
        data = parse_json_text(text)
        if self.model is not None:
            return self.model.model_validate(data)
        _check(data, self.json_schema)
        return data

    def repair_prompt(self, error: Exception) -> str:
        return ("Your previous reply did not match the required JSON schema "
                f"({str(error).splitlines()[0][:300]}). Reply again with only a JSON value "
                f"matching this schema, no prose:\n{json.dumps(self.json_schema)}")

    def __repr__(self) -> str:
        return f"OutputSchema({self.name})"
