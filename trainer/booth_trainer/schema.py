"""A small JSON Schema validator for the subset that ``spec.schema.json`` uses.

The spec schema is generated from the zod schema in ``src/training/spec.ts`` (draft 2020-12).
Depending on a third-party validator would put one more package on every GPU host and into the
test run that must work with plain Python, so this module implements exactly the keywords the
generator emits: ``type`` (also lists), ``enum``, ``const``, ``minimum``/``maximum``,
``exclusiveMinimum``/``exclusiveMaximum``, ``multipleOf``, ``minLength``/``maxLength``,
``pattern``, ``minItems``/``maxItems``, ``items``, ``properties``, ``required``,
``additionalProperties`` (``false`` or a schema), ``oneOf``, ``anyOf``, ``allOf``, ``$ref`` into
``$defs``/``definitions``, and ``default`` filling (zod's ``.default()``: a missing property takes
its default, which is then validated and filled itself). Unknown keywords are ignored, as JSON
Schema requires. Every problem is collected with its path, like zod's issues.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Dict, List, Tuple

JSON = Any


class SchemaError(ValueError):
    """The value does not match the schema.

    :ivar problems: ``(path, message)`` pairs; ``path`` is dotted (``schedule.unet.steps``,
        array items by index) or ``(root)``.
    """

    def __init__(self, problems: List[Tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def _path(parts: Tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) if parts else "(root)"


def _type_name(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: JSON, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return True
        # JSON has one number type: 2.0 is an integer for JSON Schema.
        return isinstance(value, float) and math.isfinite(value) and value.is_integer()
    if name == "number":
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    return False


def _json_equal(a: JSON, b: JSON) -> bool:
    """Equality in JSON's sense: ``true`` is not ``1``, but ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _show(value: JSON) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else _type_name(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Validator:
    def __init__(self, root: Dict[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> Dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref values are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[part]
        return node

    def check(self, schema: Any, value: JSON, path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> JSON:
        """Validates ``value`` and returns it with defaults filled (a new object where filled)."""
        if schema is True or schema == {}:
            return value
        if schema is False:
            problems.append((_path(path), "is not allowed here"))
            return value
        if "$ref" in schema:
            value = self.check(self.resolve(schema["$ref"]), value, path, problems)

        types = schema.get("type")
        if types is not None:
            names = types if isinstance(types, list) else [types]
            if not any(_is_type(value, n) for n in names):
                problems.append((_path(path), f"expected {' or '.join(names)}, got {_type_name(value)}"))
                return value
            if "integer" in names and isinstance(value, float) and not ("number" in names):
                value = int(value)

        if "const" in schema and not _json_equal(value, schema["const"]):
            problems.append((_path(path), f"must be {schema['const']!r} (got {_show(value)})"))
        if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
            allowed = ", ".join(repr(e) for e in schema["enum"])
            problems.append((_path(path), f"must be one of {allowed} (got {_show(value)})"))

        if _is_type(value, "number"):
            self._number(schema, value, path, problems)
        if isinstance(value, str):
            n = len(value)
            if "minLength" in schema and n < schema["minLength"]:
                problems.append((_path(path), f"must have at least {schema['minLength']} characters (got {n})"))
            if "maxLength" in schema and n > schema["maxLength"]:
                problems.append((_path(path), f"must have at most {schema['maxLength']} characters (got {n})"))
            if "pattern" in schema and re.search(schema["pattern"], value) is None:
                problems.append((_path(path), f"must match /{schema['pattern']}/"))
        if isinstance(value, list):
            value = self._array(schema, value, path, problems)
        if isinstance(value, dict):
            value = self._object(schema, value, path, problems)

        for sub in schema.get("allOf", []):
            value = self.check(sub, value, path, problems)
        if "anyOf" in schema:
            value = self._any_of(schema["anyOf"], value, path, problems)
        if "oneOf" in schema:
            value = self._one_of(schema["oneOf"], value, path, problems)
        return value

    def _number(self, schema: Dict[str, Any], value: float, path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> None:
        p = _path(path)
        if "minimum" in schema and value < schema["minimum"]:
            problems.append((p, f"must be >= {schema['minimum']} (got {value})"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append((p, f"must be <= {schema['maximum']} (got {value})"))
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            problems.append((p, f"must be > {schema['exclusiveMinimum']} (got {value})"))
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            problems.append((p, f"must be < {schema['exclusiveMaximum']} (got {value})"))
        m = schema.get("multipleOf")
        if m:
            q = value / m
            # Tolerate binary floating point (0.3 / 0.1 is 2.9999999999999996).
            if abs(q - round(q)) > 1e-9 * max(1.0, abs(q)):
                problems.append((p, f"must be a multiple of {m} (got {value})"))

    def _array(self, schema: Dict[str, Any], value: List[JSON], path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> List[JSON]:
        p = _path(path)
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append((p, f"must have at least {schema['minItems']} items (got {len(value)})"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append((p, f"must have at most {schema['maxItems']} items (got {len(value)})"))
        items = schema.get("items")
        if isinstance(items, dict):
            value = [self.check(items, v, path + (i,), problems) for i, v in enumerate(value)]
        return value

    def _object(self, schema: Dict[str, Any], value: Dict[str, JSON], path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> Dict[str, JSON]:
        props: Dict[str, Any] = schema.get("properties", {})
        out = dict(value)
        for name in schema.get("required", []):
            if name not in value:
                problems.append((_path(path + (name,)), "is required"))
        for name, sub in props.items():
            if name in out:
                out[name] = self.check(sub, out[name], path + (name,), problems)
            elif isinstance(sub, dict) and "default" in sub:
                out[name] = self.check(sub, copy.deepcopy(sub["default"]), path + (name,), problems)
        extra = schema.get("additionalProperties", True)
        for name in value:
            if name in props:
                continue
            if extra is False:
                known = ", ".join(props) or "none"
                problems.append((_path(path + (name,)), f"is not a known field (known: {known})"))
            elif isinstance(extra, dict):
                out[name] = self.check(extra, out[name], path + (name,), problems)
        return out

    def _try(self, schema: Any, value: JSON, path: Tuple[Any, ...]) -> Tuple[JSON, List[Tuple[str, str]]]:
        problems: List[Tuple[str, str]] = []
        result = self.check(schema, copy.deepcopy(value), path, problems)
        return result, problems

    def _any_of(self, branches: List[Any], value: JSON, path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> JSON:
        attempts = [self._try(b, value, path) for b in branches]
        for result, errs in attempts:
            if not errs:
                return result
        problems.extend(self._best(branches, value, attempts, path))
        return value

    def _one_of(self, branches: List[Any], value: JSON, path: Tuple[Any, ...], problems: List[Tuple[str, str]]) -> JSON:
        attempts = [self._try(b, value, path) for b in branches]
        good = [r for r, errs in attempts if not errs]
        if len(good) == 1:
            return good[0]
        if len(good) > 1:
            problems.append((_path(path), f"matches {len(good)} of the allowed shapes; it must match exactly one"))
            return value
        problems.extend(self._best(branches, value, attempts, path))
        return value

    def _best(self, branches: List[Any], value: JSON, attempts: List[Tuple[JSON, List[Tuple[str, str]]]], path: Tuple[Any, ...]) -> List[Tuple[str, str]]:
        """Explains a failed union the way a person reads it.

        A discriminated union (every branch fixes ``properties.type.const``) reports the errors
        of the branch the value names, or the allowed ``type`` values; otherwise the branch with
        the fewest problems is reported.
        """
        tags = []
        for b in branches:
            b = self.resolve(b["$ref"]) if isinstance(b, dict) and "$ref" in b else b
            tag = b.get("properties", {}).get("type", {}).get("const") if isinstance(b, dict) else None
            tags.append(tag)
        if all(t is not None for t in tags):
            if isinstance(value, dict) and value.get("type") in tags:
                return attempts[tags.index(value["type"])][1]
            allowed = ", ".join(repr(t) for t in tags)
            got = _show(value.get("type")) if isinstance(value, dict) and "type" in value else "nothing"
            return [(_path(path + ("type",)), f"must be one of {allowed} (got {got})")]
        return min((errs for _, errs in attempts), key=len)


def validate(schema: Dict[str, Any], value: JSON) -> JSON:
    """Validates ``value`` against ``schema`` and returns a copy with every default filled.

    :param schema: a JSON Schema using the subset described in the module docstring.
    :param value: parsed JSON.
    :returns: the value with defaults filled in (the input is not modified).
    :raises SchemaError: listing every problem with its dotted path.
    """
    problems: List[Tuple[str, str]] = []
    result = _Validator(schema).check(schema, copy.deepcopy(value), (), problems)
    if problems:
        raise SchemaError(problems)
    return result
