"""The desktop app (PySide6). Threads are created only in :mod:`.workers`."""
