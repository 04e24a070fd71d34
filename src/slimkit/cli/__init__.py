"""The command line: a thin layer over the public API; it owns the terminal."""
