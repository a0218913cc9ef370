"""The training engine: typed options (`options`), the one epoch loop (`loop`), its
callbacks (`callbacks`) and the record of a run (`history`). Backend-neutral: a
backend supplies a runner (`loop.Runner`) and the loop drives it."""
