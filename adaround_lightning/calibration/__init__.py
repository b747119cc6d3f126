"""The calibration engine: an orchestrator around a pure fit step.

:mod:`.api` (``adaround``), :mod:`.walk` (the orchestrator's phases), :mod:`.plan`,
:mod:`.networks`, :mod:`.inputs`, :mod:`.cache` (the LightningDataModule),
:mod:`.fit` and :mod:`.reconstruction` (the LightningModules), :mod:`.trainer` (the Trainer
factory), :mod:`.layer_report`, :mod:`.records` and :mod:`.checkpoint` (typed results and
resume records), :mod:`.progress`, :mod:`.config` (``AdaroundConfig``). Depends on
:mod:`adaround_lightning.quant`, :mod:`adaround_lightning.graph` and
:mod:`adaround_lightning.core`.
"""
