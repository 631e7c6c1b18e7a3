"""Make a saved LoRA adapter matter: overwrite its B weights (zero-initialised) with large random ones."""

from __future__ import annotations

from pathlib import Path


def strengthen_adapter(run_dir: Path, std: float = 0.05, seed: int = 1) -> None:
    """Replace every lora_B tensor in RUN_DIR/adapter with seeded N(0, std) values, in place (checksums renewed)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights_file = Path(run_dir) / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in weights.items():
        if "lora_B" in name:
            weights[name] = torch.randn(tensor.shape, generator=generator) * std
    save_file(weights, weights_file)
    from chattune.io import write_checksums

    write_checksums(weights_file.parent)  # a deliberate change: the adapter's checksums follow it


# fp32 rounding of the same gradient summed in another order (pieces vs whole batches, ranks):
# a reduction of n terms is off by at most ~n * 2^-24 of their absolute sum; n <= ~1e3 here.
REORDERED_SUM_RTOL = 1e3 * 2.0**-24


def assert_same_sgd_training(reference: dict, other: dict) -> None:
    """Two adapters trained by plain SGD from the same init on the same gradients, summed differently.

    SGD keeps the weight change linear in the gradients, so reordered fp32 sums stay ~n ulp
    apart (Adam's g / sqrt(v) turns a rounding difference in a near-zero gradient into a step
    of up to lr). The scale is the largest update: lora_B starts at zero, so it is all update.
    """
    import torch

    assert reference.keys() == other.keys()
    scale = max(float(t.abs().max()) for name, t in reference.items() if "lora_B" in name)
    assert scale > 0, "the steps moved the adapter"
    for name in reference:
        diff = float((reference[name] - other[name]).abs().max())
        assert diff <= REORDERED_SUM_RTOL * scale, (name, diff, scale)
        assert torch.isfinite(other[name]).all()
