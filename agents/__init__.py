"""Agents: one module each, wiring a topic to the logic under tables/."""
