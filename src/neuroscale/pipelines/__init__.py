"""Participant- and group-level workflows composed from analysis and io."""
