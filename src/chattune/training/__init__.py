"""Train: config -> Trainer -> run dir."""
