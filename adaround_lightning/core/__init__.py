"""What every layer of the package uses, and that imports nothing else from it.

Modules: errors, choices, atomic, distributed, host_memory, interrupt, environment.
"""
