"""Passes over a validated IR, one concern each, framework-free: shapes of every node
(``shapes``), parameters and multiply-adds per module (``analysis``), the weighted
instances and their neutral weight roles (``instances``), the compile-time inference
rewrites (``fold``), the feature taps a backbone offers (``taps``), and ``pipeline.load``, which runs them from a spec path.
"""
