"""The JSON-Schema subset validator on small schemas (keywords the generator may emit)."""

import unittest

from booth_trainer.schema import SchemaError, validate


def problems(schema, value):
    try:
        validate(schema, value)
    except SchemaError as e:
        return e.problems
    return []


class Keywords(unittest.TestCase):
    def test_types(self):
        self.assertEqual(problems({"type": "integer"}, True), [("(root)", "expected integer, got boolean")])
        self.assertEqual(problems({"type": "number"}, float("nan")), [("(root)", "expected number, got number")])
        self.assertEqual(problems({"type": ["string", "null"]}, None), [])
        self.assertEqual(problems({"type": "object"}, []), [("(root)", "expected object, got array")])

    def test_const_and_enum_are_type_aware(self):
        self.assertTrue(problems({"const": 1}, True))
        self.assertFalse(problems({"const": 1}, 1.0))
        self.assertTrue(problems({"enum": [0, 1]}, False))

    def test_bounds_and_multiple_of(self):
        s = {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "multipleOf": 0.1}
        self.assertFalse(problems(s, 0.3))
        self.assertTrue(problems(s, 0))
        self.assertTrue(problems(s, 1.05))
        self.assertTrue(problems(s, 0.35))

    def test_ref_and_defs(self):
        s = {"$defs": {"pos": {"type": "integer", "minimum": 1}}, "type": "object", "properties": {"n": {"$ref": "#/$defs/pos", "default": 3}}}
        self.assertEqual(validate(s, {}), {"n": 3})
        self.assertEqual(problems(s, {"n": 0}), [("n", "must be >= 1 (got 0)")])

    def test_default_is_validated_and_filled_recursively(self):
        s = {"type": "object", "properties": {"o": {"type": "object", "default": {}, "properties": {"x": {"type": "integer", "default": 7}}}}}
        self.assertEqual(validate(s, {}), {"o": {"x": 7}})

    def test_one_of_exactly_one(self):
        s = {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}
        self.assertEqual(problems(s, 5), [("(root)", "matches 2 of the allowed shapes; it must match exactly one")])
        self.assertFalse(problems(s, 0.5))
        self.assertTrue(problems(s, -0.5))

    def test_any_of_fills_from_the_first_match(self):
        s = {"anyOf": [{"type": "object", "properties": {"a": {"default": 1}}, "required": ["k"]}, {"type": "object"}]}
        self.assertEqual(validate(s, {"k": 0}), {"k": 0, "a": 1})

    def test_additional_properties_schema(self):
        s = {"type": "object", "additionalProperties": {"type": "string"}}
        self.assertEqual(problems(s, {"a": "x", "b": 2}), [("b", "expected string, got integer")])

    def test_all_problems_reported_with_paths(self):
        s = {"type": "object", "required": ["a"], "properties": {"b": {"type": "array", "items": {"type": "integer"}}}, "additionalProperties": False}
        got = problems(s, {"b": [1, "x"], "c": 0})
        self.assertIn(("a", "is required"), got)
        self.assertIn(("b.1", "expected integer, got string"), got)
        self.assertIn(("c", "is not a known field (known: b)"), got)


if __name__ == "__main__":
    unittest.main()
