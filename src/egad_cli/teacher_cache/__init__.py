"""The teacher cache: one teacher pass stored as safetensors shards plus a manifest (DESIGN §7)."""
