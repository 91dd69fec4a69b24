"""Speed and memory comparisons, each timed as a ratio against a baseline measured in the same process."""
