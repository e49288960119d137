"""Reading every real-world Wan file format into our native (official Wan) key names.

- ``files``: lazy safetensors (single/sharded) and safe ``.pth`` reading, prefixes, key views.
- ``storage``: storage dtypes (bf16/fp16/fp32/fp8/scaled fp8) and filling meta-built models.
- ``detect``: what a file is; Wan DiT variant and official default settings.
- ``dit_loader``, ``vae_loader``, ``text_encoder_loader``, ``clip_vision_loader``: one per model.
- ``*_keys``: explicit key tables (official <-> diffusers / HF); ``lora_*``: LoRA files.
"""
