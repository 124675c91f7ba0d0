"""The typed IR and how a spec becomes one: one pydantic class per op with its fields,
shape rule, weights and multiply-adds (``ops``; a combinator's class also parses its
mapping), the training recipe (``recipe``), params and overrides (``params``), the
resolver that turns a loaded document into a ``Network`` (``resolve``: the sections;
``layers``: a layer -> its node; ``substitute``: ``$name`` and ``${...}`` values;
``validate``: pydantic's errors as located lines), and the JSON Schema derived from the
classes (``schema``).
"""
