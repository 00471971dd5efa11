"""mult.app: the Gradio search page (talks to mult.serving only)."""
