"""Shipped YAML scenarios (data); `load_scenario("tiny")` finds them by name."""
