"""Calibration and evaluation data.

Modules: sources, transforms, idx, assets.
"""
