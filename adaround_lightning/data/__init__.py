"""Dataset readers (idx files, Fashion-MNIST)."""
