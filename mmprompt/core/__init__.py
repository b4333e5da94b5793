"""Bottom layer: atomic file/directory writes, parameter checks, the prefix-injection contract, names."""
