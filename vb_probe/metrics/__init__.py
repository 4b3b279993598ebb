"""Pure functions from attention rows and annotations to counts; baselines go through the same code."""
