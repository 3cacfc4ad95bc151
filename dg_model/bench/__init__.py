"""GPU benchmarks of the full 26B-A4B architecture (random weights): `python -m dg_model.bench.gpu`, `.gpu_e2e`."""
