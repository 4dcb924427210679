"""Simulated environments (functional, Gymnax-style pytrees): the hospital ED scheduler."""
