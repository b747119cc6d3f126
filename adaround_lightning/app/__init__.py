"""The application: the Hydra command line, one run end to end, and the commands around it.

Modules: cli, run, phases, settings, schema, evaluate, agreement, evaluate_onnx, report, sweep, summarize_cli, verify_cli, bench_cli, bench_memory.
"""  # noqa: E501 (every module on one line)
