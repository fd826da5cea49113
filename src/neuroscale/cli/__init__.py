"""Command-line interface (BIDS App)."""
