"""Process-level helpers, private to d2lft: atomic file writes with the umask's modes
(`atomic`), keeping freed memory in the heap during training (`heap`), peak host memory
(`memory`) and CPU thread counts when both frameworks share a process (`threads`).

They import nothing else of d2lft and no framework.
"""
