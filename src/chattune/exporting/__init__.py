"""Export a run dir: merged HF folder or GGUF file, behind a fidelity gate."""
