"""Flow-matching training with the pack's own models: the WanNano recipes (``wanflow train-nano``).

Uses ``wan/``, ``model_loaders/`` and ``samplers/``; never ``nodes/`` or ComfyUI.
"""
