"""Research: experiment configs, grids of variants, the runner and its reports (docs/results)."""
