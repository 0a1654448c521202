"""MySQL semantics that are not Beam code: literals, statement plans,
row expressions, what ops do to a row, and value coercion."""
