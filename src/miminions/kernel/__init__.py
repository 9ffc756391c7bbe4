"""The kernel: rules without I/O (scheduler, supervisor, models, hookspecs) and the façade."""
