"""Developer tools run from the source checkout (not installed): the layer check and the structure report."""
