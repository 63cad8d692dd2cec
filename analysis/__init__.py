"""Per-layer statistics (hooks), figures, tables and reports from stored results."""
