"""The application: the Hydra command line, one run end to end, and the tools around it.

:mod:`.cli` (``@hydra.main``), :mod:`.run` (setup, calibrate, export, evaluate, write
results), :mod:`.settings`, :mod:`.models`, :mod:`.evaluate`, :mod:`.report`, :mod:`.sweep`,
:mod:`.summarize`, :mod:`.verify`, :mod:`.bench`, :mod:`.loading`.
"""
