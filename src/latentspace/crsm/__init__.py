"""CRSM: a Mamba language model with an asynchronous MCTS planner that nudges its state (state deltas)."""
