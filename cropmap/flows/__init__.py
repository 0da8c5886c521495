"""Prefect flows of cropmap: build-cube, train-model, map-country; wiring of :mod:`cropmap.jobs` only."""
