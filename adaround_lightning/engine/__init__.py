"""The engine both front ends share: an orchestration's steps around a pure fit step.

Modules: adaround_config, engine_config, walk_options, layer_steps, input_grids, bit_plan, progress; subpackages cache, fit, records, mixed (mixed precision: budget, sensitivity, allocation).

Depends on graph, quant, core.
"""  # noqa: E501 (every module on one line)
