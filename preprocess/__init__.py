"""Stage 1: read the figshare dataset, build condition masks and augmented masks, make demo data."""
