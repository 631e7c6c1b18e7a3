"""Data: files and built-in sets -> conversations -> token ids with trained-token labels."""
