"""The quality bench's scorer process: held-out loss of adapters on the fp32 base, one per request.

`python -m bench.quality_scorer --eval N` loads the built-in base in fp32 and the first N
held-out huanhuan rows, prints `ready <base loss>`, then for each folder named on stdin
(adapter_config.json + adapter_model.safetensors) prints `loss <value>` from
`common.heldout_loss`. It runs apart from the training process so that scoring neither
changes the trainee's dtypes or autocast nor counts in its peak RSS. It does not train.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> None:
    import torch
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.common import heldout_loss, model_dir, split_rows

    parser = argparse.ArgumentParser(prog="python -m bench.quality_scorer")
    parser.add_argument("--eval", type=int, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    path = model_dir()
    _, rows = split_rows(0, args.eval)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"ready {heldout_loss(base, tokenizer, rows):.6f}", flush=True)
    model = None
    for line in sys.stdin:
        folder = line.strip()
        if model is None:
            model = PeftModel.from_pretrained(base, folder)
        else:
            set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))
        print(f"loss {heldout_loss(model, tokenizer, rows):.6f}", flush=True)


if __name__ == "__main__":
    main()
