"""JSON Schema violations explained the way an author fixes them: the key they misspelt (and the
name they meant, also another framework's word for it), the alternative they meant, the kind of
value that is wrong; with the path of the offending field."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema


def _strict_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 2.0 as an integer; a rate, stride, pad or shape of 2.0 is a mistake here.
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def strict_validator(schema_path: Path) -> Any:
    return StrictValidator(json.loads(schema_path.read_text()))


def _wrong_alternative(error: jsonschema.ValidationError) -> bool:
    """The value is of another kind than this alternative (wrong type, another generator, a number
    where this alternative lists strings)."""
    if error.validator == "type" and not error.relative_path:
        return True
    if error.validator in ("enum", "const") and not error.relative_path:
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        return all(type(value) is not type(error.instance) for value in allowed)
    return error.validator in ("enum", "const") and bool(error.relative_path)


# Names other frameworks use for our keys, so a ported case gets a precise hint.
KEY_ALIASES = {
    "dilation": "rate",
    "dilations": "rate",
    "dilation_rate": "rate",
    "rhs_dilation": "rate",
    "strides": "stride",
    "window_strides": "stride",
    "pad": "padding",
    "pads": "padding",
    "dtype": "dtypes",
    "filter": "kernel",
    "filters": "kernel",
    "weight": "kernel",
    "weights": "kernel",
    "value": "input",
    "x": "input",
    "lhs": "input",
    "rhs": "kernel",
    "group": "groups",
    "feature_group_count": "groups",
    "expected": "expect",
    "name": "id",
}


def _suggest(name: str, allowed: list[str]) -> str | None:
    if KEY_ALIASES.get(name) in allowed:
        return KEY_ALIASES[name]
    close = difflib.get_close_matches(name, allowed, n=1) or [
        KEY_ALIASES[m] for m in difflib.get_close_matches(name, list(KEY_ALIASES), n=1) if KEY_ALIASES[m] in allowed
    ]
    return close[0] if close else None


def _allowed_values(schema: Mapping[str, Any]) -> list[Any]:
    return list(schema["enum"]) if "enum" in schema else [schema["const"]] if "const" in schema else []


def _unknown_discriminator(error: jsonschema.ValidationError) -> tuple[str, list[Any]] | None:
    """A key that tells the alternatives apart (e.g. `generator`) whose value none of them accepts."""
    if not isinstance(error.instance, dict) or not isinstance(error.validator_value, list):
        return None
    for key in error.instance:
        declaring = [i for i, sub in enumerate(error.validator_value) if key in sub.get("properties", {})]
        failed = {
            sub.relative_schema_path[0]
            for sub in error.context or []
            if sub.validator in ("enum", "const") and list(sub.relative_path) == [key]
        }
        if declaring and set(declaring) <= failed:
            allowed = [v for i in declaring for v in _allowed_values(error.validator_value[i]["properties"][key])]
            if allowed:
                return key, allowed
    return None


def _kind_name(value: Any) -> str:
    kind = {bool: "boolean", str: "string", int: "integer", float: "number", list: "array", dict: "table"}
    return _article(kind.get(type(value), type(value).__name__))


def _article(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + {"object": "table"}.get(kind, kind)


def _overlap(error: jsonschema.ValidationError, branch: Any) -> int:
    """How many of the value's keys an alternative declares: the one the author most likely meant."""
    if not isinstance(error.instance, dict) or not isinstance(error.validator_value, list):
        return 0
    return len(set(error.instance) & set(error.validator_value[branch].get("properties", {})))


def explain_schema_error(error: jsonschema.ValidationError) -> tuple[str, list[Any]]:
    """A readable message and the path of the offending field for a schema violation."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in unexpected:
            close = _suggest(name, allowed)
            hints.append(f"unknown key {name!r}" + (f" (did you mean {close!r}?)" if close else ""))
        return "; ".join(hints) + f"; allowed keys: {', '.join(allowed)}", path + unexpected[:1]
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return error.message, path + missing[:1]
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not allowed here: use {error.schema['description']}", path
    if error.validator in ("oneOf", "anyOf") and error.context:
        if all(sub.validator == "required" for sub in error.context):
            names = [n for sub in error.context for n in re.findall(r"'([^']+)' is a required", sub.message)]
            return f"needs one of: {' or '.join(repr(n) for n in names)}", path
        unknown = _unknown_discriminator(error)
        if unknown:
            key, allowed = unknown
            return (
                f"unknown {key} {error.instance[key]!r}: use one of {', '.join(map(str, allowed))}",
                [*path, key],
            )
        # Explain the alternative the author meant: one of the value's own kind that declares
        # most of its keys, and of those the one with the fewest complaints.
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [b for b, errs in branches.items() if not any(_wrong_alternative(e) for e in errs)]
        description = error.schema.get("description", "")
        described = f"; {field_path(path[-1:]) or 'it'} takes {description[:1].lower()}{description[1:].rstrip('.')}"
        if not meant:  # a value of a kind no alternative takes
            kinds = {sub.validator_value for sub in error.context if sub.validator == "type"}
            kinds |= {"string" for sub in error.context if sub.validator == "enum" and not sub.relative_path}
            if isinstance(error.instance, float) and "integer" in kinds:
                wrong = "is not an integer"
            else:
                wrong = f"is {_kind_name(error.instance)}, not {' or '.join(sorted(map(_article, kinds)))}"
            return f"{error.instance!r} {wrong}" + (described if description else ""), path
        chosen = max(meant, key=lambda b: (_overlap(error, b), -len(branches[b])))
        errors = branches[chosen]
        missing = [n for e in errors if e.validator == "required" for n in re.findall(r"'([^']+)' is a req", e.message)]
        if missing and len(missing) == len(errors):
            return f"{' and '.join(repr(n) for n in missing)} {'is' if len(missing) == 1 else 'are'} required", [
                *path,
                missing[0],
            ]
        # A value of the wrong type deep inside says more than a length complaint above it.
        typed = [e for e in errors if e.validator == "type"]
        message, sub_path = explain_schema_error(typed[0] if typed else jsonschema.exceptions.best_match(errors))
        return message + (described if description else ""), sub_path
    return error.message, path


def field_path(path: list[Any]) -> str:
    return ".".join(str(p) for p in path)
