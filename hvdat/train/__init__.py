"""`hvdat train`: its frozen config, the launcher side (run), and the workers (trainer and its parts, the static
and elastic drivers, the collapse guard, the GPU fast path)."""
