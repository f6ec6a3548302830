"""Command-line tools around run folders and datasets: compare runs, dataset EDA, prediction pictures."""
