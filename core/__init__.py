"""MoE Studio's core: model files, placement, memory, commands. Pure Python, no Qt.

Everything here is a library you could script: typed values and functions, no event system.
"""

__version__ = "0.1.0"
