"""What every layer of the package uses, and that imports nothing else from it.

:mod:`.errors` (the user's fixable mistakes), :mod:`.choices` (string settings as Enums),
:mod:`.atomic` (crash-safe files), :mod:`.distributed` (reductions over DDP processes).
"""
