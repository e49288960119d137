"""Wan 2.1/2.2 architectures in plain torch. Never imports ComfyUI."""
