"""mult.serving: the local Triton server, the Triton gRPC encoder client and the FAISS gallery."""
