"""The build: a policy drives attempts (prune -> recover -> export -> measure) over a profiled target."""
