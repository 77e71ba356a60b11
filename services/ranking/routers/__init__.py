"""One router per concern: ranking (the hot routes), operations (health, metrics), admin (model swaps)."""
