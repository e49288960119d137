"""WanNano: the synthetic clip world and the tiny Wan models trained on it (shipped in ``models/``)."""
