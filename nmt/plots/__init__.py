"""Drawing the papers' pictures as PNG files (matplotlib, no display needed)."""
