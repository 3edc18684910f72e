"""Ray Tune sweeps and ablation grids: specs, the runner, the trial body, the MLflow records of a
sweep, the Ray session. Imports msc_platform.run, msc_platform.cluster and msc_platform.reports."""
