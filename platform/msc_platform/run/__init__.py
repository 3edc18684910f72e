"""One training or evaluation run: config, data, runtime, checkpoints, training, evaluation and
its MLflow run. Imports model and data_tools, never msc_platform.sweeps."""
