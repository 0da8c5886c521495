"""Jobs: a country run resolved once, the per-tile job functions, executors, and the country jobs
(train a country, map a country) written once for the flows and the CLI."""
