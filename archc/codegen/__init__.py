"""What every code-generating backend shares: the backend protocol and registry
(``backend``, entry-point group ``archc.backends``), the plan of names, blocks and
expressions decided once for all backends (``plan``), and safe identifiers (``naming``).
Imports no framework.
"""
