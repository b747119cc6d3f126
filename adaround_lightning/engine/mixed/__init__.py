"""Mixed precision under a budget: sizes (budget), sensitivity, allocation, and choose_bits."""
