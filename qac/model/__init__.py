"""XR-Linear: per-node linear rankers over a label tree (train in C, beam search in C)."""
