"""The commands built on the pipeline and the backends: ``verify`` and ``convert``
(``verify``), ``export``, ``importer``, ``variants``, the diagrams (``diagram`` lays out,
``draw`` renders), ``view`` (Netron) and the parameter table (``report``). They reach a
backend only through the registry.
"""
