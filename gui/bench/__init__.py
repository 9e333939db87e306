"""Benchmarks of the current plan: :class:`BenchPanel` (``BenchPanel(document, engine_provider)``,
a tab of the main window), its plot, its process wrapper and the run entries kept with profiles."""

from moe_studio.gui.bench.bench_panel import BenchPanel, EngineProvider

__all__ = ["BenchPanel", "EngineProvider"]
