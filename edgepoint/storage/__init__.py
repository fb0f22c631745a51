"""SQLite persistence: one aiosqlite connection per database file, numbered migrations."""
