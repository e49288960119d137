"""Headless runner: executes WanFlow JSON workflows without the ComfyUI server."""
