"""The spec's surface, below everything else: YAML read with the source position of every
node (``loader``), the ``${...}`` expression language (``expr``), and the located errors
every stage raises (``errors``: FILE:LINE:COL: PATH: expected ..., found ...). Knows no op.
"""
