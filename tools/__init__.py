"""Build and compile checks run by make (not part of the fusedops package)."""
