"""Online serving of the nightly lists (Redis export and read helpers)."""
