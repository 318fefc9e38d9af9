"""What the three trainers (token LM, acoustic model, vocoders) share: config loading, the shard stream,
checkpoints, the LR schedule, RNG state and metrics."""
