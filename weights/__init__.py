"""Bundled weights: loadable by name, e.g. npseg.load("ultraseg-130k")."""
