"""Built-in benchmarks: TinyMem (and, later, RESTOR)."""
