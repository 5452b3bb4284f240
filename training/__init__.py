"""Training infrastructure: crash-safe checkpoint writes, automatic resume, FSDP sharding."""
