"""Files that hold networks: portable parameters (`weights`) and checkpoints
(`checkpoint`, with the `Checkpointer` callback and resuming)."""
