"""Process-level helpers, private to d2lft: atomic file writes with the umask's modes
(`atomic`), keeping freed memory in the heap during training (`heap`), peak host memory
(`memory`, and how much of it is free), CPU thread counts when both frameworks share a
process (`threads`), and file locks and temporary names for folders that several
processes share (`locks`).

They import nothing else of d2lft and no framework.
"""
