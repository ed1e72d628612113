"""`hvdat pseudo-label`: the frozen job config, the launcher side (run) and the sharded worker."""
