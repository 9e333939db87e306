"""Placement and what follows from it: the per-tensor placement (``placement``), ``-ot`` resolver
and generator (``overrides``), the layer split (``layers``), memory estimates (``memory``),
auto-placement (``autoplace``), advice (``advisor``), engine settings (``settings``), command
lines (``cmdline``) and the whole plan put together (``planning``)."""
