"""InferGym: Gymnasium environments over a fast GPU inference-cluster simulator."""
