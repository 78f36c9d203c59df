"""The offline performance model (perf_model), its calibration table and fit, and the
model-vs-measured table a GPU fills (calibration)."""
