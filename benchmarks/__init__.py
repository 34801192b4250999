"""Latency, throughput, memory and accuracy harnesses; may import anything in the project."""
