"""Sources: readers of market-data files and feeds."""
