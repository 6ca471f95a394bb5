"""Whatever runs jobs: the interface (base) and its implementations (docker, next slurm)."""
