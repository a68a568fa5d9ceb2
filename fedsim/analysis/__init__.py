"""Analysis: reading run directories, comparisons, tables, statistics, plots, tuning."""
