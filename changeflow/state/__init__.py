"""changeflow's state store: what a job remembers across runs besides its
checkpoints (which side effects already happened)."""
