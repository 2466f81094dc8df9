"""Graph passes: normalise the graph before analysis, apply a plan, validate the result."""
