"""Flow-matching schedules, solvers, guidance and the two-expert MoE sampler."""
