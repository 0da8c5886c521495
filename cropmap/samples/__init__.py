"""Labelled pixel time series: the sample-set structure, every reader, samples drawn from reference maps."""
