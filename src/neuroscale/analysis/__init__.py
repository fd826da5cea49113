"""Graph-level analyses on lazy images and series (lazy in, lazy out)."""
