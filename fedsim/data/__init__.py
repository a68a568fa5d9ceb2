"""Data and scenarios: sources, partitions, shifts, open-world splits, participation, faults,
augmentation, the federation."""
