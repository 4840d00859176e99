"""Storage: the `Backend` contract (`base`) and its implementations (`sqlite`, `tcp`).

Nothing is imported here, so importing one backend module costs only that module and what
it needs, and no backend can reach another through this package by accident.
"""
