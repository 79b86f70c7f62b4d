"""nanorevisual: a small, readable implementation of the ReVisual-R1 recipe (arXiv 2506.04207) for Qwen2.5-VL."""
