"""The bundled backend plugins, one subpackage each (``torch_backend``, ``keras_backend``):
renderer, templates, weight mapping, trainer. They are found through the entry-point group
``archc.backends`` like a third party's, never imported by the core; each imports its
framework lazily.
"""
