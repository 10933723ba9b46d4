"""unmemorize."""
