"""The commands built on the pipeline and the backends: ``verify`` and ``convert``
(``verify``), ``export``, ``importer``, ``variants``, ``sweep`` (training every variant
with seeds on an engine: ``sweep_engines``; the comparison: ``sweep_report``), the diagrams (``diagram`` lays out,
``draw`` renders), ``view`` (Netron) and the parameter table (``report``). They reach a
backend only through the registry.
"""
