"""Running one generation on several processes: Ulysses sequence parallel for the Wan DiT and
the process-group launch (``spawn`` for local ranks, or ``torchrun``). See docs/distributed.md."""
