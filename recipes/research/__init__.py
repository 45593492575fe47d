"""Research tools: sweeps (ablations), diagnostic tasks, length extrapolation, inspection."""
