"""hostdiag: a host-resident diagnostics agent and its central collector."""

__all__ = ["__version__"]

__version__ = "0.1.0"
