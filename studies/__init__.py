"""Studies beside the recipe: the demo, the PAD studies and explorer, their plots and script runner."""
