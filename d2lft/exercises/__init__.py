"""The chapter's exercises as features: learning-rate sweeps, fine-tuning against
training from scratch (`sweep`, exercises 1-2) and the new head initialised from the
source classifier (`head_init`, exercise 4). Exercise 3 (freezing) is a pipeline
option: `BookLoop(freeze=True)` / `FastPipeline(freeze=True)`."""
