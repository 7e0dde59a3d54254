"""Measurement harnesses (compile time, ...); their command lines live in ``launch/``."""
