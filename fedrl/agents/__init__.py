"""Reinforcement-learning agents (pure functions over pytrees)."""
