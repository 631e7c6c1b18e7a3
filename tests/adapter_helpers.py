"""Make a saved LoRA adapter matter: overwrite its B weights (zero-initialised) with large random ones."""

from __future__ import annotations

from pathlib import Path


def strengthen_adapter(run_dir: Path, std: float = 0.05, seed: int = 1) -> None:
    """Replace every lora_B tensor in RUN_DIR/adapter with seeded N(0, std) values, in place."""
    import torch
    from safetensors.torch import load_file, save_file

    weights_file = Path(run_dir) / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(tensor.shape, generator=generator) * std
    save_file(weights, weights_file)
