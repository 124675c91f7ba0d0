"""archc: a declarative architecture-spec compiler for convolutional networks.

The pipeline runs one way through the subpackages, each importing only those before it:
``syntax`` (YAML with positions, expressions, located errors) -> ``ir`` (the typed IR and
the resolver that builds it) -> ``passes`` (shapes, counts, instances, folds) ->
``codegen`` (the backend protocol, registry and shared plan) -> ``training`` (the
framework-free training kit) and ``tools`` (verify, export, import, variants, diagrams) ->
``backends`` (the torch and keras plugins). ``api`` and ``cli`` sit on top.
"""
