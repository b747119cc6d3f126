"""The fit step: one fresh Lightning Trainer over a reconstruction LightningModule.

:mod:`.fit_step`, :mod:`.reconstruction`, :mod:`.trainer`, :mod:`.active_set`, :mod:`.fisher`.
"""
