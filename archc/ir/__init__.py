"""The typed IR and how a spec becomes one: one pydantic class per op with its fields,
shape rule, weights and multiply-adds (``ops``), the training recipe (``recipe``), params
and overrides (``params``), the resolver that turns a loaded document into a ``Network``
(``resolve``), and the JSON Schema derived from the classes (``schema``).
"""
