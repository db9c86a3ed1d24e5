"""Event sources: the kernel's tracefs and proc connector, and /proc polling."""
