"""The shipped presets: run configs (*.toml, hf/, book/) and sweeps (ablations/), read by name
through gptzoo.recipes.config.presets; a package only so that they travel in the wheel."""
