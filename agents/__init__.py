"""Blue-team learners (DIAL-SAU, QMIX), baselines, training and reports (cyberdial.agents)."""
