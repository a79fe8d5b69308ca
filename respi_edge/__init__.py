"""respi-edge: RespLLM respiratory screening on the edge. A screening aid, not a diagnosis."""

__version__ = "0.1.0"
