"""mult.train: clustering, MULT label transfer, cluster memories, losses, samplers and the trainer."""
