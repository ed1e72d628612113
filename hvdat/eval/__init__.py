"""`hvdat eval`: the frozen config (with the resolved plan inside), the launcher side (run), the worker, the batches
with their queue and store, the cascade and its stages, and the summary that becomes the report."""
