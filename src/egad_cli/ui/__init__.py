"""Terminal output: the rich console, progress bars, tables and histograms."""
