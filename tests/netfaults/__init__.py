"""Real network faults between intact and its upstream (network namespaces)."""
