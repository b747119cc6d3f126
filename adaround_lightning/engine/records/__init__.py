"""Typed records of a calibration: reports, coverage, resume checkpoints, the result protocol.

:mod:`.results`, :mod:`.layer_report`, :mod:`.coverage`, :mod:`.checkpoint`.
"""
