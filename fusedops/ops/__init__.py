"""Per-op math, registered ops and autograd Functions (see each module's docstring)."""
